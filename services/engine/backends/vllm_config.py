"""Settings of the vLLM backend. Kept apart from the backend so that reading settings never imports
vLLM (the engine imports vLLM lazily, only when this backend is chosen)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class VllmSettings(BaseModel):
    """Maps onto vLLM's AsyncEngineArgs; env: SWITCHYARD_ENGINE_VLLM__<FIELD> (nested delimiter __)."""

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
