"""Settings of the edge (the public OpenAI-compatible HTTP API); env prefix SWITCHYARD_EDGE_."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Settings the edge no longer reads, and what replaced them. They stay declared so that a deployment
# still setting one fails at start, saying so, instead of running without what it thinks it set.
_RETIRED = {
    "api_key_hashes": (
        "SWITCHYARD_EDGE_API_KEY_HASHES is no longer read: the router checks API keys now. Create "
        "keys with `switchyard keys create` (they live in the router's database) and remove the setting"
    ),
    "allow_unauthenticated": (
        "SWITCHYARD_EDGE_ALLOW_UNAUTHENTICATED is no longer read: the router checks API keys now. To "
        "accept any key, run the router with SWITCHYARD_ROUTER_ACCOUNTING__ENABLED=false"
    ),
}


class EdgeSettings(BaseSettings):
    """Env: SWITCHYARD_EDGE_<FIELD>."""

    # hide_input_in_errors: a key pasted into a retired setting must not reach the logs.
    model_config = SettingsConfigDict(
        env_prefix="SWITCHYARD_EDGE_", env_nested_delimiter="__", extra="forbid", hide_input_in_errors=True
    )

    host: str = "127.0.0.1"
    # 0 lets the OS choose (tests); EdgeServer.port tells which port was bound.
    port: int = Field(default=8000, ge=0, le=65535)
    # Any gRPC target: "host:port", or "dns:///router:50051" for client-side balancing over replicas.
    router_address: str = "127.0.0.1:50051"

    # Retired (see _RETIRED).
    api_key_hashes: None = Field(default=None, exclude=True)
    allow_unauthenticated: None = Field(default=None, exclude=True)

    # The longest a generation may run; a request may ask for less (body `timeout` or header
    # `x-request-timeout`, in seconds) but never more. It becomes the gRPC deadline of the router call.
    request_timeout_seconds: float = Field(default=600.0, gt=0)
    # Deadline of the router's small unary calls (models, usage, the request log).
    control_timeout_seconds: float = Field(default=10.0, gt=0)
    # Deadline of the router health check behind GET /health (probes time out after about a second).
    health_timeout_seconds: float = Field(default=1.0, gt=0)
    # Larger request bodies are refused with 413 before they are read whole (16 MiB: far beyond any
    # context window's worth of text, well below what would tie up the edge).
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    # How long a stopping edge lets running requests finish.
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)

    log_level: str = "INFO"
    # Prometheus metrics at http://host:metrics_port/metrics, off the API port; unset: not served.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    log_json: bool = False

    @field_validator(*_RETIRED, mode="before")
    @classmethod
    def _refuse_retired(cls, value: object, info: ValidationInfo) -> None:
        if value is None:
            return None
        raise ValueError(_RETIRED[info.field_name])
