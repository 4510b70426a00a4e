"""OpenAI error objects: every error the edge answers is {"error": {"message", "type", "param", "code"}}.

`code` is a string (the google.rpc.ErrorInfo reason, lower-cased, e.g. "model_not_found") or null,
never an integer; a plain invalid value (reason INVALID_REQUEST) is null, as the edge's own
validation errors are. Statuses follow STYLE.md's table (google/rpc/code.proto's HTTP mapping). Missing
or wrong API keys answer 401 with type "authentication_error" (STYLE.md's table, so that a key the
edge refuses and a key the router refuses look alike) and code "invalid_api_key" (what OpenAI sends).

429s carry the types OpenAI really sends, which clients match on: out of credits is type and code
"insufficient_quota"; a rate limit is code "rate_limit_exceeded" with type "requests" or "tokens"
(the limit that was hit); anything else exhausted (e.g. the concurrency limit, which OpenAI does not
have) is STYLE.md's "rate_limit_error". Their headers: `Retry-After` and the router's x-ratelimit-*
values; `x-should-retry: false` (read by the OpenAI SDKs) when waiting cannot help: no credits, or a
request larger than the key's whole token limit.
"""

from __future__ import annotations

import math
from typing import Any

import grpc
import orjson
from pydantic import ValidationError
from starlette.responses import Response

from services.common.errors import HTTP_STATUS, RemoteError
from services.edge.protocol import InvalidParameter, error_param

INTERNAL_MESSAGE = "The server had an error while processing your request."

# Reasons whose OpenAI `code` is not their lower-cased name. A plain invalid value is code null
# whoever refused it (the edge's own validation or the engine's), as OpenAI answers it.
_CODES = {"INVALID_REQUEST": None}

# gRPC code -> (OpenAI error type, message for errors whose own message is not for callers); the
# HTTP status is services.common.errors.HTTP_STATUS's.
_BY_CODE: dict[grpc.StatusCode, tuple[str, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: ("invalid_request_error", "The request is invalid."),
    grpc.StatusCode.OUT_OF_RANGE: ("invalid_request_error", "The request is invalid."),
    grpc.StatusCode.FAILED_PRECONDITION: ("invalid_request_error", "The request is invalid."),
    grpc.StatusCode.UNAUTHENTICATED: ("authentication_error", "Invalid API key."),
    grpc.StatusCode.PERMISSION_DENIED: ("permission_error", "This API key may not do that."),
    grpc.StatusCode.NOT_FOUND: ("invalid_request_error", "Not found."),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("rate_limit_error", "Too many requests; retry later."),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("timeout_error", "The request timed out."),
    grpc.StatusCode.UNAVAILABLE: ("server_error", "The service is temporarily unavailable; retry later."),
}
_INTERNAL = ("server_error", INTERNAL_MESSAGE)
_INSUFFICIENT_QUOTA = "INSUFFICIENT_QUOTA"
_RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"


class ApiError(Exception):
    """An error as the HTTP client sees it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        return Response(orjson.dumps(self.body()), self.status, self.headers, media_type="application/json")


def _retry_after(seconds: str | None) -> str:
    """Retry-After in whole seconds (at least 1), from ErrorInfo metadata["retry_after"] when given."""
    try:
        return str(max(1, math.ceil(float(seconds or 1))))
    except ValueError:
        return "1"


def _too_many_requests(error: RemoteError) -> tuple[str, dict[str, str]]:
    """The OpenAI error type and the headers of a 429 (see the module docstring)."""
    headers = {name: value for name, value in error.metadata.items() if name.startswith("x-ratelimit-")}
    if error.reason == _INSUFFICIENT_QUOTA:
        return "insufficient_quota", headers | {"x-should-retry": "false"}
    if "retry_after" not in error.metadata and error.reason == _RATE_LIMIT_EXCEEDED:
        headers["x-should-retry"] = "false"  # larger than the whole limit: waiting does not help
    else:
        headers["Retry-After"] = _retry_after(error.metadata.get("retry_after"))
    limit = error.metadata.get("limit")
    if error.reason == _RATE_LIMIT_EXCEEDED and limit in ("requests", "tokens"):
        return limit, headers
    return "rate_limit_error", headers


def from_remote(error: RemoteError) -> ApiError:
    status = HTTP_STATUS.get(error.code, 500)
    error_type, generic_message = _BY_CODE.get(error.code, _INTERNAL) if status != 500 else _INTERNAL
    # Typed service errors carry an ErrorInfo reason and messages written for callers. Anything else
    # (a transport failure, a crash) may hold addresses or internals, so the caller gets a generic line.
    message = error.message if error.reason and status != 500 else generic_message
    code = _CODES.get(error.reason, error.reason.lower()) or (
        "timeout" if error.code == grpc.StatusCode.DEADLINE_EXCEEDED else None
    )
    headers = None
    if status == 429:
        error_type, headers = _too_many_requests(error)
    elif status == 503:
        headers = {"Retry-After": _retry_after(error.metadata.get("retry_after"))}
    return ApiError(
        status, message, type=error_type, param=error.metadata.get("param"), code=code, headers=headers
    )


def from_rpc_error(error: grpc.RpcError) -> ApiError:
    return from_remote(RemoteError.from_rpc_error(error))


# pydantic's type errors -> what OpenAI says the parameter should have been.
_EXPECTED_TYPES = {
    "float_type": "a number",
    "int_type": "an integer",
    "bool_type": "a boolean",
    "string_type": "a string",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
}


def _json_type(value: Any) -> str:
    """OpenAI's name for the JSON type of a value in its "but got ... instead" messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def from_validation_error(error: ValidationError) -> ApiError:
    """The first problem of a request body that did not validate, naming its parameter."""
    errors = error.errors(include_url=False, include_context=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return ApiError(400, "We could not parse the JSON body of your request: it is not valid JSON.")
    param = error_param(first["loc"])
    if param is None:
        message = "The request body must be a JSON object." if first["type"] == "model_type" else first["msg"]
        return ApiError(400, message)
    more = f" ({len(errors) - 1} more problems)" if len(errors) > 1 else ""
    expected = _EXPECTED_TYPES.get(first["type"])
    if expected is not None:
        got = _json_type(first.get("input"))
        return ApiError(
            400, f"Invalid type for '{param}': expected {expected}, but got {got} instead.{more}", param=param
        )
    return ApiError(400, f"Invalid value for '{param}': {first['msg']}.{more}", param=param)


def from_invalid_parameter(error: InvalidParameter) -> ApiError:
    return ApiError(400, error.message, param=error.param)


def invalid_api_key(message: str) -> ApiError:
    return ApiError(401, message, type="authentication_error", code="invalid_api_key")


def internal_error() -> ApiError:
    return ApiError(500, INTERNAL_MESSAGE, type="server_error")
