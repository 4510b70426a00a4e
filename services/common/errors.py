"""Typed service errors and their one wire form: a gRPC status with a google.rpc.ErrorInfo.

Servicers raise `ServiceError` subclasses; `ServiceErrorInterceptor` (services.common.grpc_server)
turns them into statuses. Clients turn an `AioRpcError` back into a `RemoteError` with
`RemoteError.from_rpc_error`, so the reason survives every hop (engine -> router -> edge).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from switchyard.inference.v1 import inference_pb2

ERROR_DOMAIN = "switchyard.dev"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


# google/rpc/code.proto's HTTP mapping: what the edge answers for a status, and what the router
# logs a request as having ended with. Anything else is 500.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNAVAILABLE: 503,
}


def reason_name(reason: int) -> str:
    """ERROR_REASON_MODEL_NOT_FOUND -> "MODEL_NOT_FOUND" (the string in ErrorInfo.reason)."""
    return inference_pb2.ErrorReason.Name(reason).removeprefix("ERROR_REASON_")


class ServiceError(Exception):
    """An error a caller may see: its code and reason are the contract, the message is for people."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: int = inference_pb2.ERROR_REASON_UNSPECIFIED

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = dict(metadata or {})

    def to_status(self) -> grpc.Status:
        detail = any_pb2.Any()
        info = error_details_pb2.ErrorInfo(domain=ERROR_DOMAIN, metadata=self.metadata)
        if self.reason:
            info.reason = reason_name(self.reason)
        detail.Pack(info)
        return rpc_status.to_status(
            status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])
        )


class InvalidRequestError(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = inference_pb2.ERROR_REASON_INVALID_REQUEST

    def __init__(self, message: str, *, param: str | None = None, **kw) -> None:
        super().__init__(message, **kw)
        if param:
            self.metadata["param"] = param


class ContextLengthExceededError(InvalidRequestError):
    reason = inference_pb2.ERROR_REASON_CONTEXT_LENGTH_EXCEEDED


class NoEligibleModelError(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = inference_pb2.ERROR_REASON_NO_ELIGIBLE_MODEL


class ModelNotFoundError(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    reason = inference_pb2.ERROR_REASON_MODEL_NOT_FOUND

    def __init__(self, model: str, **kw) -> None:
        super().__init__(f"The model '{model}' does not exist or is not served here.", **kw)
        self.metadata.setdefault("param", "model")


class EngineUnavailableError(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = inference_pb2.ERROR_REASON_ENGINE_UNAVAILABLE


class NoHealthyReplicaError(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = inference_pb2.ERROR_REASON_NO_HEALTHY_REPLICA


class InvalidApiKeyError(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = inference_pb2.ERROR_REASON_INVALID_API_KEY


class PermissionDeniedError(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = inference_pb2.ERROR_REASON_PERMISSION_DENIED


class InsufficientQuotaError(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = inference_pb2.ERROR_REASON_INSUFFICIENT_QUOTA


class RateLimitExceededError(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = inference_pb2.ERROR_REASON_RATE_LIMIT_EXCEEDED


class DeadlineExceededError(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = inference_pb2.ERROR_REASON_TIMEOUT


@dataclass
class RemoteError(Exception):
    """A failed RPC as the caller sees it: status code, ErrorInfo reason (or ""), message, metadata."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" + (f" ({self.reason})" if self.reason else "")

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> RemoteError:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = (error.details() if hasattr(error, "details") else None) or code.name
        reason, metadata = "", {}
        trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
        for key, value in trailers or ():
            if key != _STATUS_DETAILS_KEY:
                continue
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason, metadata = info.reason, dict(info.metadata)
        return cls(code=code, message=message, reason=reason, metadata=metadata)

    def to_status(self) -> grpc.Status:
        """Pass the error on unchanged (a router relaying an engine's answer)."""
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.ErrorInfo(domain=ERROR_DOMAIN, reason=self.reason, metadata=self.metadata)
        )
        return rpc_status.to_status(
            status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])
        )
