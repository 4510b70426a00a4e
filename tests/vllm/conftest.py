"""One real vLLM engine per test session: the tiny local model (built once under the cache dir)
behind an EngineServer with the vllm backend on port 0.

scripts/run-tests keeps vLLM's caches and temp files inside .cache/ and works offline; the two
settings below must be in place before vLLM is imported, so they are set here.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

# torch.compile gains nothing on a 2-layer model and costs a minute of startup on a CPU.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
# Saves a process (and its memory) on a small machine.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("vllm", reason="vLLM's CPU build is not installed (scripts/bootstrap cpu)")

from services.engine.backends.vllm import VllmBackend
from tests.engine.engine_client import EngineClient, running_engine

MODEL = "switchyard/tiny-llama"
# Small enough for a shared 2-core machine, large enough for a few concurrent requests.
ENGINE_SETTINGS = {
    "backend": "vllm",
    "served_model_name": MODEL,
    "vllm": {"max_model_len": 1024, "kv_cache_memory_bytes": 64 * 1024 * 1024, "max_num_seqs": 16},
}


@pytest.fixture(scope="session")
async def engine() -> AsyncIterator[EngineClient]:
    async with running_engine(**ENGINE_SETTINGS) as client:
        yield client


@pytest.fixture
def backend(engine: EngineClient) -> VllmBackend:
    assert isinstance(engine.server.backend, VllmBackend)
    return engine.server.backend
