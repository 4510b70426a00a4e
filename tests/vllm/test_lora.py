"""LoRA adapters from settings, chosen by the request's `model`. Runs its own engine (LoRA on)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from services.engine.tiny_model import ensure_tiny_model
from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from tests.engine.engine_client import EngineClient, running_engine
from tests.vllm.conftest import ENGINE_SETTINGS, MODEL

pytestmark = pytest.mark.vllm

ADAPTER = "switchyard/tiny-llama:lora"
RANK = 8


def write_adapter(folder: Path, base_model: Path) -> Path:
    """A PEFT LoRA adapter for the tiny model whose update is large enough to change its output."""
    config = json.loads((base_model / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    generator = torch.Generator().manual_seed(0)
    weights = {}
    for layer in range(layers):
        prefix = f"base_model.model.model.layers.{layer}.self_attn.o_proj"
        weights[f"{prefix}.lora_A.weight"] = torch.randn(RANK, hidden, generator=generator)
        weights[f"{prefix}.lora_B.weight"] = torch.randn(hidden, RANK, generator=generator)
    folder.mkdir()
    save_file(weights, folder / "adapter_model.safetensors")
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_model),
        "r": RANK,
        "lora_alpha": RANK,
        "lora_dropout": 0.0,
        "target_modules": ["o_proj"],
        "bias": "none",
        "fan_in_fan_out": False,
    }
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config))
    return folder


@pytest.fixture(scope="module")
async def lora_engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EngineClient]:
    adapter = write_adapter(tmp_path_factory.mktemp("lora") / "adapter", ensure_tiny_model())
    vllm_settings = {
        **ENGINE_SETTINGS["vllm"],
        "lora_adapters": {ADAPTER: str(adapter)},
        "max_lora_rank": RANK,
    }
    async with running_engine(**{**ENGINE_SETTINGS, "vllm": vllm_settings}) as client:
        yield client


async def test_model_names_the_adapter_that_generates(lora_engine: EngineClient):
    base = await lora_engine.generate(prompt="Hello", max_tokens=8, temperature=0, ignore_eos=True)
    served_name = await lora_engine.generate(
        prompt="Hello", model=MODEL, max_tokens=8, temperature=0, ignore_eos=True
    )
    adapted = await lora_engine.generate(
        prompt="Hello", model=ADAPTER, max_tokens=8, temperature=0, ignore_eos=True
    )
    assert served_name.choices[0].token_ids == base.choices[0].token_ids
    assert adapted.choices[0].token_ids != base.choices[0].token_ids


async def test_model_info_lists_the_adapters(lora_engine: EngineClient):
    info = await lora_engine.stub.GetModelInfo(engine_pb2.GetModelInfoRequest())
    assert [(adapter.name, Path(adapter.path).name) for adapter in info.lora_adapters] == [
        (ADAPTER, "adapter")
    ]
