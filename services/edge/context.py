"""What the edge knows about the HTTP request it is serving, beyond the body."""

from __future__ import annotations

from dataclasses import dataclass

from switchyard.inference.v1 import inference_pb2 as inference

# The router reads it as GenerateRequest.disable_cache (see router_service.proto).
CACHE_HEADER = "x-switchyard-cache"
CACHE_OFF = (CACHE_HEADER, "off")


@dataclass(slots=True)
class AccessRecord:
    """Filled while a request is served; the request-id middleware writes it as the access-log line."""

    request_id: str
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def record_usage(self, usage: inference.Usage) -> None:
        self.prompt_tokens = usage.prompt_tokens
        self.completion_tokens = usage.completion_tokens


@dataclass(frozen=True, slots=True)
class RequestContext:
    request_id: str
    # The caller's key, forwarded to the router, which checks it.
    api_key: str
    # Seconds: the edge's limit, lowered by the x-request-timeout header when it asks for less.
    timeout: float
    access: AccessRecord
    # The x-switchyard-cache: off header: keep this request out of the router's response cache.
    cache_off: bool = False

    def timeout_for(self, requested: float | None) -> float:
        """The deadline of a generation whose body asked for `requested` seconds (capped)."""
        return self.timeout if requested is None else min(self.timeout, requested)

    def metadata(self, request_id: str | None = None) -> tuple[tuple[str, str], ...]:
        """gRPC metadata of a router call; `request_id` for one prompt of a fanned-out request."""
        request_id = request_id or self.request_id
        metadata = (("authorization", f"Bearer {self.api_key}"), ("x-request-id", request_id))
        return (*metadata, CACHE_OFF) if self.cache_off else metadata
