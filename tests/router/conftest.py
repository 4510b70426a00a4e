"""Integration fixtures: real sim EngineServers and a real RouterServer on port 0, a registry file
written for each test, and the generated aio stub as the client.

`InstrumentedSim` is the sim backend plus two things tests need to see or provoke on a real engine:
the requests it received, and failures (before any output, or after some deltas) injected on demand.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import yaml

from services.common.errors import EngineUnavailableError
from services.engine.backends.sim import SimBackend
from services.engine.backends.sim_config import SimSettings
from services.engine.server import EngineServer
from services.engine.settings import EngineSettings
from services.router.server import RouterServer
from services.router.settings import RouterSettings
from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from switchyard.engine.v1 import engine_service_pb2_grpc as engine_grpc
from switchyard.inference.v1 import inference_pb2
from switchyard.router.v1 import router_service_pb2 as router_pb2
from switchyard.router.v1 import router_service_pb2_grpc as router_grpc


class InstrumentedSim(SimBackend):
    def __init__(self, settings: SimSettings, served_model_name: str) -> None:
        super().__init__(settings, served_model_name=served_model_name)
        self.requests: list[engine_pb2.GenerateRequest] = []
        # Every call fails at once while set (the engine stays SERVING: a sick replica, not a dead one).
        self.failing = False
        # The next call fails after sending this many deltas.
        self.break_after_deltas: int | None = None
        # Set once a call has sent its first delta.
        self.streaming = asyncio.Event()

    async def generate(
        self, request: engine_pb2.GenerateRequest
    ) -> AsyncIterator[engine_pb2.GenerateResponse]:
        self.requests.append(request)
        if self.failing:
            raise EngineUnavailableError("injected failure")
        limit, self.break_after_deltas = self.break_after_deltas, None
        sent = 0
        async for event in super().generate(request):
            yield event
            if event.HasField("delta"):
                self.streaming.set()
                sent += 1
                if limit is not None and sent >= limit:
                    raise EngineUnavailableError("injected failure mid-stream")


@dataclass
class ModelSpec:
    id: str
    provider: str
    quality: float
    input_price: float = 1.0
    output_price: float = 2.0
    replicas: int = 1
    context_window: int = 4096
    capabilities: dict = field(
        default_factory=lambda: {"tools": True, "json_schema": True, "max_logprobs": 20}
    )
    aliases: list[str] = field(default_factory=list)
    sim: dict = field(default_factory=dict)


# Two providers; "acme/fast" has two replicas for replica-level tests.
MODELS = [
    ModelSpec(
        "acme/fast", "acme", quality=0.4, input_price=0.5, output_price=1.0, replicas=2, aliases=["fast"]
    ),
    ModelSpec("acme/best", "acme", quality=0.9, input_price=5.0, output_price=10.0),
    ModelSpec("globex/mid", "globex", quality=0.7, input_price=1.0, output_price=2.0),
]


@dataclass
class Engine:
    model: str
    backend: InstrumentedSim
    server: EngineServer
    address: str

    async def load(self) -> engine_pb2.GetLoadResponse:
        async with grpc.aio.insecure_channel(self.address) as channel:
            return await engine_grpc.EngineServiceStub(channel).GetLoad(engine_pb2.GetLoadRequest())


@dataclass
class Reply:
    routed: router_pb2.Routed
    deltas: list[inference_pb2.TokenDelta]
    finished: router_pb2.GenerateFinished
    order: list[str]  # event kinds in arrival order

    def text(self, index: int = 0) -> str:
        return "".join(delta.text for delta in self.deltas if delta.index == index)

    def finish_reasons(self) -> dict[int, int]:
        return {delta.index: delta.finish_reason for delta in self.deltas if delta.finish_reason}


@dataclass
class Cluster:
    router: RouterServer
    engines: dict[str, list[Engine]]
    channel: grpc.aio.Channel
    registry_path: Path

    @property
    def stub(self) -> router_grpc.RouterServiceStub:
        return router_grpc.RouterServiceStub(self.channel)

    def engine_at(self, address: str) -> Engine:
        return next(
            engine for engines in self.engines.values() for engine in engines if engine.address == address
        )

    def all_engines(self) -> list[Engine]:
        return [engine for engines in self.engines.values() for engine in engines]

    async def generate(self, request: router_pb2.GenerateRequest, **call_options) -> Reply:
        routed, deltas, finished, order = None, [], None, []
        async for event in self.stub.Generate(request, **call_options):
            kind = event.WhichOneof("event")
            order.append(kind)
            if kind == "routed":
                routed = event.routed
            elif kind == "delta":
                deltas.append(event.delta)
            else:
                finished = event.finished
        return Reply(routed, deltas, finished, order)


def registry_yaml(specs: list[ModelSpec], addresses: dict[str, list[str]]) -> str:
    models = [
        {
            "id": spec.id,
            "provider": spec.provider,
            "aliases": spec.aliases,
            "quality": spec.quality,
            "input_price": spec.input_price,
            "output_price": spec.output_price,
            "context_window": spec.context_window,
            "capabilities": spec.capabilities,
            "replicas": addresses[spec.id],
        }
        for spec in specs
    ]
    return yaml.safe_dump({"models": models})


async def start_engine(model: str, sim: dict, port: int = 0) -> Engine:
    settings = EngineSettings(port=port, backend="sim", served_model_name=model, sim=sim)
    backend = InstrumentedSim(settings.sim, model)
    server = EngineServer(settings, backend=backend)
    await server.start()
    return Engine(model, backend, server, f"127.0.0.1:{server.port}")


# Fast reactions for tests: health re-checked and loads polled often, tiny backoffs. Routing tests
# run without accounting (no keys needed); test_accounting.py turns it on.
TEST_ROUTER_SETTINGS = {
    "reveal_model_names": True,
    "accounting": {"enabled": False},
    "registry_poll_interval": 0,
    "replicas": {"health_retry_interval": 0.05, "load_poll_interval": 0.05},
    "retry": {"backoff_initial": 0.001, "backoff_max": 0.005},
}


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            _merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


@pytest.fixture
async def make_cluster(tmp_path) -> AsyncIterator[Callable[..., Cluster]]:
    clusters: list[Cluster] = []

    async def make(specs: list[ModelSpec] = MODELS, **router_settings) -> Cluster:
        engines = {
            spec.id: [await start_engine(spec.id, spec.sim) for _ in range(spec.replicas)] for spec in specs
        }
        path = tmp_path / "models.yaml"
        path.write_text(registry_yaml(specs, {m: [e.address for e in es] for m, es in engines.items()}))
        settings = RouterSettings(port=0, registry_path=path, **_merge(TEST_ROUTER_SETTINGS, router_settings))
        router = RouterServer(settings)
        await router.start()
        cluster = Cluster(router, engines, grpc.aio.insecure_channel(f"127.0.0.1:{router.port}"), path)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        await cluster.channel.close()
        await cluster.router.stop(0)
        for engine in cluster.all_engines():
            await engine.server.stop(0)


async def eventually(condition: Callable[[], object], within: float = 5.0, interval: float = 0.02) -> None:
    """Polls `condition` (sync or async) until it is truthy; fails after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)
