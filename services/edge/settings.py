"""Settings of the edge (the public OpenAI-compatible HTTP API); env prefix SWITCHYARD_EDGE_."""

from __future__ import annotations

import hashlib
import re

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def hash_api_key(key: str) -> str:
    """The form in which the edge stores an accepted API key: its sha256 as lower-case hex."""
    return hashlib.sha256(key.encode()).hexdigest()


class EdgeSettings(BaseSettings):
    """Env: SWITCHYARD_EDGE_<FIELD>; lists as JSON, e.g. SWITCHYARD_EDGE_API_KEY_HASHES='["<hex>"]'."""

    # hide_input_in_errors: a plain-text key pasted into api_key_hashes must not reach the logs.
    model_config = SettingsConfigDict(
        env_prefix="SWITCHYARD_EDGE_", env_nested_delimiter="__", extra="ignore", hide_input_in_errors=True
    )

    host: str = "127.0.0.1"
    # 0 lets the OS choose (tests); EdgeServer.port tells which port was bound.
    port: int = Field(default=8000, ge=0, le=65535)
    # Any gRPC target: "host:port", or "dns:///router:50051" for client-side balancing over replicas.
    router_address: str = "127.0.0.1:50051"

    # sha256 hex digests (hash_api_key) of the accepted keys; the keys themselves are never stored.
    api_key_hashes: list[str] = Field(default_factory=list)
    # With no key hashes, every request is refused unless this is true: a missing secret must not
    # silently open the API. Set it when another layer (the router's key store) checks the keys;
    # the caller's key is forwarded to the router either way.
    allow_unauthenticated: bool = False

    # The longest a generation may run; a request may ask for less (body `timeout` or header
    # `x-request-timeout`, in seconds) but never more. It becomes the gRPC deadline of the router call.
    request_timeout_seconds: float = Field(default=600.0, gt=0)
    # Deadline of the router's small unary calls (ListModels, GetModel).
    control_timeout_seconds: float = Field(default=10.0, gt=0)
    # Deadline of the router health check behind GET /health (probes time out after about a second).
    health_timeout_seconds: float = Field(default=1.0, gt=0)
    # How long a stopping edge lets running requests finish.
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)

    log_level: str = "INFO"
    log_json: bool = False

    @field_validator("api_key_hashes")
    @classmethod
    def _hashes_are_sha256_hex(cls, hashes: list[str]) -> list[str]:
        normalised = [h.strip().lower() for h in hashes]
        for digest in normalised:
            if not _SHA256_HEX.fullmatch(digest):
                raise ValueError("each api_key_hashes entry must be a sha256 hex digest (see hash_api_key)")
        return normalised

    @property
    def auth_required(self) -> bool:
        return bool(self.api_key_hashes) or not self.allow_unauthenticated
