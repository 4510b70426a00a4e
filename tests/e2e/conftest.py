"""The whole suite in one event loop: real sim engines and a real router on gRPC ports, the edge
under uvicorn on a real HTTP port, and the official `openai` SDK as the client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import openai
import pytest
import uvicorn

from services.edge.app import create_app
from services.edge.settings import EdgeSettings
from services.engine.server import EngineServer
from services.engine.settings import EngineSettings
from services.router.accounting import AccountingSettings, KeyPolicy
from services.router.accounting.cli import AMPLE_CREDITS
from services.router.server import RouterServer
from services.router.settings import RouterSettings
from switchyard.engine.v1 import engine_service_pb2, engine_service_pb2_grpc

API_KEY = "sy-e2e-test-key"
FAST_MODEL = "switchyard/sim"
# A slow engine (50 ms per token) for timeouts and disconnects.
SLOW_MODEL = "switchyard/sim-slow"

REGISTRY = """
models:
  - id: {fast}
    provider: local
    aliases: [sim]
    quality: 0.5
    input_price: 1.0
    output_price: 2.0
    context_window: 4096
    capabilities: {{tools: true, json_schema: true, vision: false, max_logprobs: 20}}
    replicas: ["127.0.0.1:{fast_port}"]
  - id: {slow}
    provider: local
    quality: 0.4
    input_price: 1.0
    output_price: 2.0
    context_window: 4096
    capabilities: {{tools: true, json_schema: true, vision: false, max_logprobs: 20}}
    replicas: ["127.0.0.1:{slow_port}"]
"""


@dataclass
class Suite:
    base_url: str
    fast_engine: EngineServer
    slow_engine: EngineServer
    router: RouterServer

    @property
    def router_address(self) -> str:
        return f"127.0.0.1:{self.router.port}"

    def client(self, **kw) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key=API_KEY, max_retries=0, **kw)

    async def running_requests(self, engine: EngineServer) -> int:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{engine.port}") as channel:
            stub = engine_service_pb2_grpc.EngineServiceStub(channel)
            load = await stub.GetLoad(engine_service_pb2.GetLoadRequest())
            return load.running_requests + load.waiting_requests

    async def wait_until_idle(self, engine: EngineServer, within: float = 5.0) -> int:
        """Polls the engine's own load report until nothing runs (bounded); returns what still runs."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            running = await self.running_requests(engine)
            if not running or loop.time() >= deadline:
                return running
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def serve_app(app) -> AsyncIterator[int]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="session")
async def suite(tmp_path_factory) -> AsyncIterator[Suite]:
    fast = EngineServer(EngineSettings(port=0, backend="sim", served_model_name=FAST_MODEL))
    slow = EngineServer(
        EngineSettings(port=0, backend="sim", served_model_name=SLOW_MODEL, sim={"inter_token_latency": 0.05})
    )
    await fast.start()
    await slow.start()
    folder: Path = tmp_path_factory.mktemp("e2e")
    registry = folder / "models.yaml"
    registry.write_text(
        REGISTRY.format(fast=FAST_MODEL, slow=SLOW_MODEL, fast_port=fast.port, slow_port=slow.port)
    )
    accounting = AccountingSettings(
        database_url=f"sqlite+aiosqlite:///{folder / 'state.db'}", instance_name="e2e"
    )
    router = RouterServer(RouterSettings(port=0, registry_path=str(registry), accounting=accounting))
    await router.start()
    # The suite's key, made the way `switchyard up` makes its own: an admin key with ample credits.
    await router.accounting.keys.ensure(API_KEY, KeyPolicy(name="e2e", admin=True), credits=AMPLE_CREDITS)
    edge = create_app(EdgeSettings(port=0, router_address=f"127.0.0.1:{router.port}"))
    async with serve_app(edge) as http_port:
        yield Suite(f"http://127.0.0.1:{http_port}", fast, slow, router)
    await router.stop(0)
    await slow.stop(0)
    await fast.stop(0)
