"""Settings of the vLLM backend. Kept apart from the backend so that reading settings never imports
vLLM (the engine imports vLLM lazily, only when this backend is chosen)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

# What the tiny local model needs when the settings leave it open: its chat template writes Hermes
# tool calls, and on a CPU a small KV cache and eager mode keep startup to seconds.
_TINY_MODEL_DEFAULTS: dict[str, object] = {
    "tool_call_parser": "hermes",
    "kv_cache_memory_bytes": 128 * 1024 * 1024,
    "enforce_eager": True,
}


class VllmSettings(BaseModel):
    """Maps onto vLLM's AsyncEngineArgs; env: SWITCHYARD_ENGINE_VLLM__<FIELD> (nested delimiter __)."""

    model_config = ConfigDict(extra="forbid")

    # A local path or a model id already in the local Hugging Face cache. Empty: the tiny local
    # model that `switchyard up` builds on a machine without a GPU.
    model: str = ""
    tokenizer: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    # The KV cache size in bytes; on CPU this bounds memory instead of gpu_memory_utilization.
    kv_cache_memory_bytes: int | None = None
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    max_num_seqs: int | None = None
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    trust_remote_code: bool = False
    seed: int = 0
    # Chat: a template file or inline template overriding the model's own; the tool-call and
    # reasoning parsers by vLLM's names (e.g. "hermes", "llama3_json"; "deepseek_r1").
    chat_template: str | None = None
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    # LoRA adapters served beside the base model: name -> local path.
    lora_adapters: dict[str, str] = Field(default_factory=dict)
    max_lora_rank: int = 16
    max_loras: int = 1
    max_logprobs: int = 20
    # Anything else AsyncEngineArgs accepts, passed through unchanged.
    engine_args: dict[str, object] = Field(default_factory=dict)

    def for_tiny_model(self, path: Path) -> VllmSettings:
        """These settings serving the tiny local model at `path`; fields set explicitly win."""
        defaults = {k: v for k, v in _TINY_MODEL_DEFAULTS.items() if k not in self.model_fields_set}
        return self.model_copy(update={"model": str(path), **defaults})

    def engine_kwargs(self, served_model_name: str) -> dict[str, object]:
        """Keyword arguments for vLLM's AsyncEngineArgs. Unset optional fields are left out, so
        vLLM's own defaults apply."""
        kwargs: dict[str, object] = {
            "model": self.model,
            "served_model_name": served_model_name,
            "tokenizer": self.tokenizer,
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "kv_cache_memory_bytes": self.kv_cache_memory_bytes,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "tensor_parallel_size": self.tensor_parallel_size,
            "max_num_seqs": self.max_num_seqs,
            "enforce_eager": self.enforce_eager,
            "enable_prefix_caching": self.enable_prefix_caching,
            "trust_remote_code": self.trust_remote_code,
            "seed": self.seed,
            "max_logprobs": self.max_logprobs,
            # The reasoning parser also tells structured outputs where the answer starts.
            "reasoning_parser": self.reasoning_parser,
            # Scheduler stats feed the load report (running/waiting, KV usage, prefix hits).
            "disable_log_stats": False,
        }
        if self.lora_adapters:
            kwargs |= {"enable_lora": True, "max_lora_rank": self.max_lora_rank, "max_loras": self.max_loras}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return kwargs | self.engine_args
