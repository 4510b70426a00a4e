"""The router's configuration: env prefix SWITCHYARD_ROUTER_, nested delimiter `__`
(e.g. SWITCHYARD_ROUTER_REPLICAS__POLICY=least_loaded, SWITCHYARD_ROUTER_SELECTION__BALANCED_BASE=0.4)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.router.accounting.settings import AccountingSettings

# The embedded registry `switchyard up` serves: one model on one local engine, both injectable by env.
DEFAULT_REGISTRY_PATH = Path(__file__).resolve().parents[2] / "deploy" / "local" / "models.yaml"


class SelectionSettings(BaseModel):
    """How `router_preference` trades quality against cost (see services/router/selection.py).

    A request needs quality `<preference>_base + <preference>_per_difficulty x difficulty` (clamped to
    1); every preference then picks the cheapest eligible model meeting that need (the best-quality
    model when none does). The preferences differ only in how much quality they ask for: `powerful`
    a lot even for easy requests, `efficient` little.
    """
    model_config = ConfigDict(extra="forbid")


    balanced_base: float = Field(default=0.3, ge=0.0, le=1.0)
    balanced_per_difficulty: float = Field(default=0.6, ge=0.0, le=1.0)
    powerful_base: float = Field(default=0.7, ge=0.0, le=1.0)
    powerful_per_difficulty: float = Field(default=0.3, ge=0.0, le=1.0)
    efficient_base: float = Field(default=0.0, ge=0.0, le=1.0)
    efficient_per_difficulty: float = Field(default=0.6, ge=0.0, le=1.0)
    # The cheap token estimate used for context checks and cost estimates (no tokenizer in the router).
    chars_per_token: float = Field(default=4.0, gt=0)
    # Output tokens assumed for cost estimates when a request sets no max_tokens.
    default_output_tokens: int = Field(default=256, ge=1)
    # The most characters one token could plausibly hold. An explicit model's context is otherwise
    # left to the engine's exact count; a text prompt longer than this many characters per token of
    # its context window cannot fit however it is tokenized, so it is refused without an engine call.
    max_chars_per_token: float = Field(default=32.0, gt=0)

    def quality_needed(
        self, preference: Literal["balanced", "powerful", "efficient"], difficulty: float
    ) -> float:
        base = getattr(self, f"{preference}_base")
        return min(1.0, base + getattr(self, f"{preference}_per_difficulty") * difficulty)


class RetrySettings(BaseModel):
    """Fallbacks and retries; every wait is also bounded by the request's deadline."""
    model_config = ConfigDict(extra="forbid")


    # Engine calls per request, counting the first one and mid-stream resumptions.
    max_attempts: int = Field(default=4, ge=1)
    # Exponential backoff between attempts (with jitter): initial, multiplier, cap; seconds.
    backoff_initial: float = Field(default=0.02, ge=0)
    backoff_multiplier: float = Field(default=2.0, ge=1)
    backoff_max: float = Field(default=0.5, ge=0)
    # Continue a stream on another replica when its engine fails after tokens were sent.
    resume_mid_stream: bool = True


class ReplicaSettings(BaseModel):
    """Replica choice among the engines that serve the chosen model."""
    model_config = ConfigDict(extra="forbid")


    # prefix_affinity: the replica that last served the request's leading prompt blocks (or the
    # caller's session), unless it is busier than the least-loaded one by more than affinity_load_slack;
    # least_loaded; round_robin.
    policy: Literal["prefix_affinity", "least_loaded", "round_robin"] = "prefix_affinity"
    # Seconds between GetLoad polls of every engine.
    load_poll_interval: float = Field(default=1.0, gt=0)
    # Seconds between attempts to re-open a failed health watch (an engine that is down).
    health_retry_interval: float = Field(default=1.0, gt=0)
    # Consecutive failed calls before a replica is cooled down, and the cool-down (doubling while it
    # keeps failing, up to the maximum). After it the next request probes the replica.
    failures_before_cooldown: int = Field(default=2, ge=1)
    cooldown_seconds: float = Field(default=5.0, ge=0)
    max_cooldown_seconds: float = Field(default=60.0, ge=0)
    # Prefix affinity: the prompt is hashed in blocks of this many characters (token ids for token
    # prompts), up to max blocks from the start; a bounded table remembers which replica served each.
    prefix_block_chars: int = Field(default=256, ge=16)
    prefix_max_blocks: int = Field(default=64, ge=1)
    affinity_table_size: int = Field(default=200_000, ge=1)
    session_table_size: int = Field(default=100_000, ge=1)
    # How many more outstanding requests the preferred replica may have than the least-loaded one.
    affinity_load_slack: float = Field(default=4.0, ge=0)
    # Seconds calls in flight on a replica removed from the registry may still run.
    retired_channel_grace: float = Field(default=30.0, ge=0)


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SWITCHYARD_ROUTER_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = 50051
    registry_path: Path = DEFAULT_REGISTRY_PATH
    # The registry file is re-read when its mtime, size or inode changes, checked this often (seconds;
    # 0 disables). Polling works for an edited file and for a Kubernetes ConfigMap swap alike.
    registry_poll_interval: float = Field(default=2.0, ge=0)
    # Name the real model in responses (and usage, and the request log) to everyone; otherwise only
    # to keys made with reveal_model_names (switchyard keys create --reveal-model-names).
    reveal_model_names: bool = False
    # Retired: keys that see model names are now a property of the key in the accounting database.
    # Declared only so that a deployment still setting it fails at start, saying so, instead of
    # silently redacting names for the keys it listed.
    reveal_key_hashes: None = Field(default=None, exclude=True)
    accounting: AccountingSettings = Field(default_factory=AccountingSettings)
    selection: SelectionSettings = SelectionSettings()
    retry: RetrySettings = RetrySettings()
    replicas: ReplicaSettings = ReplicaSettings()
    # Streams may run for minutes: a rolling restart gives them this long to finish (keep it below
    # the pod's terminationGracePeriodSeconds).
    drain_grace_seconds: float = Field(default=10.0, ge=0)
    # Prometheus metrics at http://host:metrics_port/metrics; unset: not served.
    metrics_port: int | None = None
    log_level: str = "INFO"
    log_json: bool = False

    @field_validator("reveal_key_hashes", mode="before")
    @classmethod
    def _reveal_key_hashes_is_retired(cls, value: object) -> None:
        if value is None:
            return None
        raise ValueError(
            "SWITCHYARD_ROUTER_REVEAL_KEY_HASHES is no longer read: give the keys that may see model "
            "names reveal_model_names instead (switchyard keys create --reveal-model-names), or set "
            "SWITCHYARD_ROUTER_REVEAL_MODEL_NAMES=true for everyone"
        )
