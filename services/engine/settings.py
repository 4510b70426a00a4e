"""EngineSettings: one engine process, read from SWITCHYARD_ENGINE_* (nested fields with __, e.g.
SWITCHYARD_ENGINE_SIM__INTER_TOKEN_LATENCY=0.02 or SWITCHYARD_ENGINE_VLLM__MODEL=/models/x)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.engine.backends.sim_config import SimSettings
from services.engine.backends.vllm_config import VllmSettings


class EngineSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SWITCHYARD_ENGINE_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = "127.0.0.1"
    # 0: the OS chooses (tests); EngineServer.port tells which.
    port: int = Field(50061, ge=0, le=65535)
    backend: Literal["sim", "vllm"] = "sim"
    # The name clients use for the model (owner/name or owner/name:version).
    served_model_name: str = "switchyard/sim"
    sim: SimSettings = Field(default_factory=SimSettings)
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    # How long a SIGTERM waits for running requests before cutting them off.
    drain_grace_seconds: float = Field(30.0, ge=0)
    # How often the backend's health is checked (a dead backend turns health NOT_SERVING).
    health_check_interval_seconds: float = Field(1.0, gt=0)
    log_level: str = "INFO"
    # Prometheus metrics at http://host:metrics_port/metrics (with the vllm backend, vLLM's own
    # engine metrics: queue, KV cache, prefix-cache hits, token throughput); unset: not served.
    metrics_port: int | None = Field(None, ge=0, le=65535)
    log_json: bool = False
