"""What the vLLM engine reports about itself and how it lets go of work: cancellation aborts the
request inside vLLM, load comes from vLLM's scheduler, model info from its config."""

from __future__ import annotations

import contextlib

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.errors import ContextLengthExceededError
from services.engine.backends.vllm import VllmBackend
from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from tests.engine.engine_client import EngineClient, request
from tests.vllm.conftest import MODEL

pytestmark = pytest.mark.vllm

# As long as the context allows: seconds of decoding on a CPU, far beyond the tests' deadlines.
ENDLESS = {"max_tokens": 1000, "ignore_eos": True}


async def test_closing_the_stream_aborts_the_request_in_vllm(backend: VllmBackend):
    llm = backend.llm
    async with contextlib.aclosing(backend.generate(request("Count", **ENDLESS))) as events:
        first = await anext(events)
        assert first.delta.token_ids
        assert llm.get_num_unfinished_requests() == 1
    # aclose() returned: vLLM has already dropped the request.
    assert llm.get_num_unfinished_requests() == 0


async def test_cancelled_grpc_call_aborts_the_request_in_vllm(engine: EngineClient, backend: VllmBackend):
    call = engine.stub.Generate(request("Count", n=2, **ENDLESS))
    await anext(aiter(call))
    assert backend.llm.get_num_unfinished_requests() == 2
    call.cancel()
    load = await engine.wait_for_load(lambda load: load.running_requests == 0)
    assert load.running_requests == 0
    assert backend.llm.get_num_unfinished_requests() == 0


async def test_deadline_aborts_the_request_in_vllm(engine: EngineClient, backend: VllmBackend):
    call = engine.stub.Generate(request("Count", **ENDLESS), timeout=0.25)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    load = await engine.wait_for_load(lambda load: load.running_requests == 0)
    assert load.running_requests == 0
    assert backend.llm.get_num_unfinished_requests() == 0


async def test_load_counts_running_requests(engine: EngineClient):
    calls = [engine.stub.Generate(request("Count", **ENDLESS)) for _ in range(3)]
    try:
        for call in calls:
            await anext(aiter(call))
        busy = await engine.wait_for_load(lambda load: load.running_requests == 3)
        assert busy.running_requests == 3
        assert 0 < busy.kv_cache_usage <= 1
        assert busy.serving
    finally:
        for call in calls:
            call.cancel()
    idle = await engine.wait_for_load(lambda load: load.running_requests == 0)
    assert (idle.running_requests, idle.waiting_requests, idle.kv_cache_usage) == (0, 0, 0)


async def test_load_reports_the_prefix_cache_hit_rate(engine: EngineClient):
    prompt = "The same long system prompt, sent again and again. " * 10
    for _ in range(3):
        await engine.generate(prompt=prompt, max_tokens=1)
    load = await engine.load()
    assert 0 < load.prefix_cache_hit_rate < 1


async def test_model_info_describes_the_served_model(engine: EngineClient):
    info = await engine.stub.GetModelInfo(engine_pb2.GetModelInfoRequest())
    assert info.served_model_name == MODEL
    assert info.backend == "vllm"
    assert info.max_model_len == 1024
    assert info.capabilities.tools, "the tiny model is served with the hermes tool parser"
    assert info.capabilities.structured_output
    assert not info.capabilities.vision
    assert info.capabilities.max_logprobs == 20
    assert list(info.lora_adapters) == []


async def test_health_is_serving(engine: EngineClient, backend: VllmBackend):
    health = health_pb2_grpc.HealthStub(engine.channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert await backend.is_healthy()


async def test_backend_raises_context_length_exceeded(backend: VllmBackend):
    with pytest.raises(ContextLengthExceededError, match="maximum context length is 1024"):
        async for _ in backend.generate(request("word " * 1200)):
            pass
