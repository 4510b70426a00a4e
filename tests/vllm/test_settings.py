"""VllmSettings -> AsyncEngineArgs keyword arguments (pure: no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm.engine.arg_utils import AsyncEngineArgs

from services.engine.backends.vllm_config import VllmSettings
from services.engine.settings import EngineSettings
from services.engine.tiny_model import ensure_tiny_model

pytestmark = pytest.mark.vllm


def test_engine_kwargs_are_accepted_by_vllm():
    model = str(ensure_tiny_model())
    settings = VllmSettings(
        model=model, lora_adapters={"a": "/adapters/a"}, engine_args={"max_num_batched_tokens": 512}
    )
    args = AsyncEngineArgs(**settings.engine_kwargs("owner/m"))
    assert (args.model, args.served_model_name) == (model, "owner/m")
    assert args.enable_lora and args.max_num_batched_tokens == 512
    # Scheduler stats are what the load report is made of.
    assert args.disable_log_stats is False


def test_unset_fields_keep_vllm_defaults():
    kwargs = VllmSettings(model="/models/m").engine_kwargs("owner/m")
    assert "max_model_len" not in kwargs and "kv_cache_memory_bytes" not in kwargs
    assert "enable_lora" not in kwargs


def test_tiny_model_defaults_yield_to_explicit_settings():
    tiny = VllmSettings(enforce_eager=False).for_tiny_model(Path("/cache/models/tiny-llama"))
    assert tiny.model == "/cache/models/tiny-llama"
    assert tiny.tool_call_parser == "hermes"
    assert tiny.kv_cache_memory_bytes is not None
    assert tiny.enforce_eager is False, "set explicitly, so kept"


def test_engine_settings_read_vllm_fields_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SWITCHYARD_ENGINE_BACKEND", "vllm")
    monkeypatch.setenv("SWITCHYARD_ENGINE_VLLM__TOOL_CALL_PARSER", "llama3_json")
    monkeypatch.setenv("SWITCHYARD_ENGINE_VLLM__LORA_ADAPTERS", '{"sql": "/adapters/sql"}')
    settings = EngineSettings()
    assert settings.vllm.tool_call_parser == "llama3_json"
    assert settings.vllm.lora_adapters == {"sql": "/adapters/sql"}
