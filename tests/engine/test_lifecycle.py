"""The engine as a service: health, reflection, drain, cancellation, deadlines, load reports, the prefix
cache, a dying backend, logging, and `python -m services.engine` as a process."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.errors import RemoteError
from services.engine.backends.sim import SimBackend
from services.engine.backends.sim.vocabulary import WORDS
from services.engine.server import SERVICE_NAME, EngineServer
from services.engine.settings import EngineSettings
from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from tests.engine.engine_client import MODEL, EngineClient, request, running_engine

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SLOW = {"inter_token_latency": 0.01}


def watch_health(engine: EngineClient) -> grpc.aio.UnaryStreamCall:
    return health_pb2_grpc.HealthStub(engine.channel).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    )


async def read_to_end(call: grpc.aio.UnaryStreamCall) -> list:
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)
    return events


async def test_health_is_serving_after_start(engine: EngineClient):
    health = health_pb2_grpc.HealthStub(engine.channel)
    for service in ("", SERVICE_NAME):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == SERVING


async def test_port_is_known_only_once_started():
    server = EngineServer(EngineSettings(port=0))
    with pytest.raises(RuntimeError):
        _ = server.port


async def test_reflection_lists_and_describes_the_engine_service(engine: EngineClient):
    stub = reflection_pb2_grpc.ServerReflectionStub(engine.channel)

    async def ask(**kw) -> reflection_pb2.ServerReflectionResponse:
        async def one() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(**kw)

        (response,) = [response async for response in stub.ServerReflectionInfo(one())]
        return response

    listed = await ask(list_services="")
    names = {service.name for service in listed.list_services_response.service}
    assert SERVICE_NAME in names
    described = await ask(file_containing_symbol=SERVICE_NAME)
    assert described.file_descriptor_response.file_descriptor_proto


async def test_model_info_describes_the_served_model(engine: EngineClient):
    info = await engine.stub.GetModelInfo(engine_pb2.GetModelInfoRequest())
    assert (info.served_model_name, info.backend, info.max_model_len) == (MODEL, "sim", 4096)
    assert info.capabilities.tools and info.capabilities.structured_output
    assert info.capabilities.max_logprobs == 20


async def test_cancelled_call_leaves_nothing_running():
    async with running_engine(sim=SLOW) as engine:
        call = engine.stub.Generate(request(max_tokens=2000, ignore_eos=True))
        assert (await call.read()).HasField("delta")
        assert (await engine.load()).running_requests == 1
        call.cancel()
        load = await engine.wait_for_load(lambda load: load.running_requests == 0)
        assert (load.running_requests, load.waiting_requests) == (0, 0)


async def test_deadline_ends_the_stream_with_deadline_exceeded_and_stops_generating():
    async with running_engine(sim=SLOW) as engine:
        call = engine.stub.Generate(request(max_tokens=2000, ignore_eos=True), timeout=0.3)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await read_to_end(call)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert (await engine.wait_for_load(lambda load: load.running_requests == 0)).running_requests == 0


async def test_requests_beyond_the_sequence_cap_wait_in_line():
    async with running_engine(sim={**SLOW, "max_running_sequences": 1}) as engine:
        first = engine.stub.Generate(request(max_tokens=2000, ignore_eos=True))
        await first.read()
        second = engine.stub.Generate(request(max_tokens=3))
        load = await engine.wait_for_load(lambda load: load.waiting_requests == 1)
        assert (load.running_requests, load.waiting_requests) == (1, 1)
        first.cancel()
        events = await read_to_end(second)  # admitted once the first is gone
        assert events[-1].finished.usage.completion_tokens == 3


async def test_load_reports_kv_cache_in_use_while_running():
    async with running_engine(sim={**SLOW, "cache_capacity_blocks": 64}) as engine:
        idle = await engine.load()
        assert (idle.running_requests, idle.kv_cache_usage, idle.serving) == (0, 0.0, True)
        call = engine.stub.Generate(request("word " * 300, max_tokens=2000, ignore_eos=True))
        await call.read()
        busy = await engine.load()
        assert busy.running_requests == 1
        assert 0.25 < busy.kv_cache_usage <= 1.0  # 300 prompt tokens in 16-token blocks of 64
        call.cancel()


async def test_repeated_prompt_is_served_from_the_prefix_cache():
    async with running_engine() as engine:
        prompt = " ".join(WORDS[:150])
        first = await engine.generate(prompt=prompt, max_tokens=1)
        assert first.usage.cached_tokens == 0
        assert (await engine.load()).prefix_cache_hit_rate == 0.0

        again = await engine.generate(prompt=prompt, max_tokens=1)
        cached = again.usage.cached_tokens
        assert 0 < cached < again.usage.prompt_tokens and cached % 16 == 0
        hit_rate = (await engine.load()).prefix_cache_hit_rate
        assert hit_rate > 0

        follow_up = await engine.generate(prompt=prompt + " and then more words follow", max_tokens=1)
        assert follow_up.usage.cached_tokens >= cached
        assert (await engine.load()).prefix_cache_hit_rate > hit_rate


async def test_drain_reports_not_serving_finishes_running_calls_and_refuses_new_ones():
    async with running_engine(sim=SLOW) as engine:
        watch = watch_health(engine)
        assert (await watch.read()).status == SERVING
        running = engine.stub.Generate(request(max_tokens=40, ignore_eos=True))
        await running.read()

        stopping = asyncio.create_task(engine.server.stop(grace=60))
        assert (await watch.read()).status == NOT_SERVING
        refused = await engine.error(request(max_tokens=1))
        assert refused.code == grpc.StatusCode.UNAVAILABLE

        rest = await read_to_end(running)
        assert rest[-1].finished.usage.completion_tokens == 40, "the running call completed during the drain"
        # Bounded only so that a hang fails: the open health watch must not hold the stop for the grace.
        await asyncio.wait_for(stopping, 20)


async def test_backend_death_turns_health_not_serving_and_fails_calls_with_engine_unavailable():
    async with running_engine(sim=SLOW) as engine:
        watch = watch_health(engine)
        assert (await watch.read()).status == SERVING
        running = engine.stub.Generate(request(max_tokens=2000, ignore_eos=True))
        await running.read()

        backend = engine.server.backend
        assert isinstance(backend, SimBackend)
        backend.simulate_crash()

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await read_to_end(running)
        failed = RemoteError.from_rpc_error(caught.value)
        assert (failed.code, failed.reason) == (grpc.StatusCode.UNAVAILABLE, "ENGINE_UNAVAILABLE")
        assert (await watch.read()).status == NOT_SERVING
        refused = await engine.error(request(max_tokens=1))
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "ENGINE_UNAVAILABLE")
        assert (await engine.load()).serving is False


async def test_one_info_line_per_request_with_its_id_and_never_the_prompt(engine: EngineClient, caplog):
    caplog.set_level(logging.INFO, logger="services.engine")
    call = engine.stub.Generate(
        request("confidential words here", max_tokens=3), metadata=(("x-request-id", "req-from-metadata"),)
    )
    await read_to_end(call)
    await read_to_end(
        engine.stub.Generate(request("confidential again", request_id="req-in-body", max_tokens=2))
    )

    lines = [record.getMessage() for record in caplog.records if record.name == "services.engine.service"]
    assert len(lines) == 2
    assert (
        "req-from-metadata ok" in lines[0]
        and "completion_tokens=3" in lines[0]
        and "finish=length" in lines[0]
    )
    assert "req-in-body ok" in lines[1]
    assert not any("confidential" in record.getMessage() for record in caplog.records)


async def test_python_m_services_engine_serves_until_sigterm(tmp_path):
    env = {**os.environ, "SWITCHYARD_ENGINE_PORT": "0", "SWITCHYARD_ENGINE_DRAIN_GRACE_SECONDS": "5"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.engine", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        port = await asyncio.wait_for(_serving_port(process), 60)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert (await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))).status == SERVING
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _serving_port(process: asyncio.subprocess.Process) -> int:
    assert process.stderr is not None
    while line := (await process.stderr.readline()).decode():
        if match := re.search(r"engine serving .* on 127\.0\.0\.1:(\d+)", line):
            return int(match.group(1))
    raise AssertionError("the engine exited before serving")
