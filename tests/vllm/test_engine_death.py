"""A vLLM engine core that dies: callers get UNAVAILABLE at once (in flight and new), health turns
NOT_SERVING. Runs its own engine, since it kills it."""

from __future__ import annotations

import asyncio
import os
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.errors import RemoteError
from services.engine.backends.vllm import VllmBackend
from tests.engine.engine_client import request, running_engine
from tests.vllm.conftest import ENGINE_SETTINGS

pytestmark = pytest.mark.vllm


async def test_dead_engine_core_means_unavailable_and_not_serving():
    async with running_engine(**ENGINE_SETTINGS) as engine:
        backend = engine.server.backend
        assert isinstance(backend, VllmBackend)
        call = engine.stub.Generate(request("Count", max_tokens=900, ignore_eos=True))
        await anext(aiter(call))

        (engine_core,) = backend.llm.engine_core.resources.engine_manager.processes
        os.kill(engine_core.pid, signal.SIGKILL)

        # The call in flight ends with an error instead of hanging (the bound is a safety net).
        with pytest.raises(grpc.aio.AioRpcError) as in_flight:
            async with asyncio.timeout(60):
                async for _ in call:
                    pass
        error = RemoteError.from_rpc_error(in_flight.value)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "ENGINE_UNAVAILABLE")

        error = await engine.error(request("Hello", max_tokens=2))
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert not await backend.is_healthy()
        watch = health_pb2_grpc.HealthStub(engine.channel).Watch(health_pb2.HealthCheckRequest())
        async with asyncio.timeout(10):
            async for update in watch:
                if update.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
        watch.cancel()
        assert not (await engine.load()).serving
