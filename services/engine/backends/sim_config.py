"""Settings of the simulated engine (the `sim` backend), apart from the backend like vllm_config.py."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SimSettings(BaseModel):
    """env: SWITCHYARD_ENGINE_SIM__<FIELD> (nested delimiter __). Times are in seconds.

    Latency model: time to first token = `time_to_first_token` + uncached prompt tokens x
    `prefill_time_per_token` (prefills run one at a time, as on one accelerator), then
    `inter_token_latency` per decode step. All zero by default, so benchmarks measure the gateway.
    """

    # A misspelt setting fails at startup instead of being silently ignored.
    model_config = ConfigDict(extra="forbid")

    # Which pseudo-model: engines with the same seed write the same text for the same request.
    model_seed: int = 0
    max_model_len: int = Field(4096, ge=1)
    max_logprobs: int = Field(20, ge=0)
    # Unless ignore_eos is set, a choice ends with EOS (finish_reason "stop") after a length in this
    # range, fixed by the prompt (greedy) or the choice's random stream (sampling).
    response_length_min: int = Field(128, ge=1)
    response_length_max: int = Field(1024, ge=1)
    time_to_first_token: float = Field(0.0, ge=0)
    inter_token_latency: float = Field(0.0, ge=0)
    prefill_time_per_token: float = Field(0.0, ge=0)
    # Prefix cache: prompt and output tokens in blocks of block_size, an LRU of up to
    # cache_capacity_blocks block hashes (0 turns prefix caching off).
    block_size: int = Field(16, ge=1)
    cache_capacity_blocks: int = Field(4096, ge=0)
    # Sequences (n or best_of per request) running at once; later requests wait for room.
    max_running_sequences: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _check_response_length(self) -> SimSettings:
        if self.response_length_min > self.response_length_max:
            raise ValueError("response_length_min must not exceed response_length_max")
        return self
