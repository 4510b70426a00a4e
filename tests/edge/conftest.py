"""The edge over real HTTP (uvicorn on port 0) against a scripted RouterService test double running
as a real grpc.aio server on port 0 (the real router is exercised by tests/e2e).

Each test may give the fake router a `script`: an async generator (request, context) -> events.
The default script generates deterministic words ("w0 w1 ...") for every choice, honouring n,
max_tokens and logprobs, the way the contract's stream lifecycle says: routed, deltas, finished.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import httpx
import openai
import pytest

from services.common.errors import InvalidApiKeyError, ModelNotFoundError, ServiceError
from services.common.grpc_server import GrpcServer
from services.edge.server import EdgeServer
from services.edge.settings import EdgeSettings
from switchyard.inference.v1 import inference_pb2 as inference
from switchyard.router.v1 import accounts_service_pb2 as accounts_pb2
from switchyard.router.v1 import accounts_service_pb2_grpc as accounts_grpc
from switchyard.router.v1 import router_service_pb2 as router_pb2
from switchyard.router.v1 import router_service_pb2_grpc as router_grpc

API_KEY = "sy-edge-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# The longest any test waits for something that should happen at once (a guard against hangs,
# never a synchronisation: the event awaited is what the test is about).
HANG_GUARD = 20.0

Script = Callable[
    [router_pb2.GenerateRequest, grpc.aio.ServicerContext], AsyncIterator[router_pb2.GenerateResponse]
]


# --- events --------------------------------------------------------------------------------------


def routed(model: str = "redacted") -> router_pb2.GenerateResponse:
    return router_pb2.GenerateResponse(routed=router_pb2.Routed(model=model))


def delta(index: int = 0, text: str = "", finish: int = 0, **fields) -> router_pb2.GenerateResponse:
    return router_pb2.GenerateResponse(
        delta=inference.TokenDelta(index=index, text=text, finish_reason=finish, **fields)
    )


def finished(
    prompt: int = 3, completion: int = 0, cached: int = 0, breakdown=None
) -> router_pb2.GenerateResponse:
    return router_pb2.GenerateResponse(
        finished=router_pb2.GenerateFinished(
            usage=inference.Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached),
            breakdown=breakdown,
        )
    )


def token_logprob(token: str, logprob: float, alternatives: int) -> inference.TokenLogprob:
    """The chosen token first among its alternatives, as greedy decoding has it."""
    tops = [inference.TopLogprob(token=token, logprob=logprob)]
    tops += [inference.TopLogprob(token=f"alt{k}", logprob=logprob - k) for k in range(1, alternatives)]
    return inference.TokenLogprob(token=token, logprob=logprob, top_logprobs=tops[:alternatives])


def prompt_words(generation: inference.GenerationInput) -> int:
    which = generation.WhichOneof("input")
    if which == "prompt":
        return len(generation.prompt.text.split())
    if which == "tokens":
        return len(generation.tokens.token_ids)
    return sum(len((m.content or "").split()) for m in generation.chat.messages)


async def words_script(
    request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext
) -> AsyncIterator[router_pb2.GenerateResponse]:
    """Choice j says "w0 w1 ..." (one word per delta), prefixed with "p<j>" for n > 1 so that the
    choices differ; stops with "length" at max_tokens (default 4). A batch answers every prompt,
    choice j of prompt i numbered i * n + j, as the router does."""
    prompts = request.batch or [request.input]
    sampling = prompts[0].sampling
    n = sampling.n or 1
    count = sampling.max_tokens if sampling.HasField("max_tokens") else 4
    yield routed()
    for position_in_batch in range(len(prompts)):
        for choice in range(n):
            for position in range(count):
                word = f"w{position}" if n == 1 else f"p{choice}w{position}"
                text = word if position == 0 else f" {word}"
                fields = {}
                if sampling.HasField("logprobs"):
                    fields["logprobs"] = [token_logprob(text, -0.5, sampling.logprobs)]
                last = position == count - 1
                index = position_in_batch * n + choice
                yield delta(index, text, inference.FINISH_REASON_LENGTH if last else 0, **fields)
    yield finished(
        prompt=sum(prompt_words(prompt) for prompt in prompts), completion=len(prompts) * n * count
    )


# --- the fake router -----------------------------------------------------------------------------


@dataclass
class Call:
    request: router_pb2.GenerateRequest
    metadata: dict[str, str]
    # Set when the call ended by cancellation (client gone, deadline passed).
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when the script is running (the call reached the router).
    started: asyncio.Event = field(default_factory=asyncio.Event)


class FakeRouter(router_grpc.RouterServiceServicer):
    def __init__(self) -> None:
        self.script: Script = words_script
        self.calls: list[Call] = []
        self.models = [
            router_pb2.Model(id="switchyard/sim", provider="local", created=1700000000, context_window=4096),
            router_pb2.Model(id="acme/big:2", provider="acme", created=1700000001, context_window=8192),
        ]
        self.new_call = asyncio.Event()
        # The keys it accepts, as the real router's key store would.
        self.api_keys = {API_KEY}
        self.accounts = FakeAccounts(self)
        # How many Authenticate calls reached it (the edge makes one only for a body it refuses).
        self.key_checks = 0

    def reset(self) -> None:
        self.script = words_script
        self.calls.clear()
        self.new_call = asyncio.Event()
        self.api_keys = {API_KEY}
        self.accounts.reset()
        self.key_checks = 0

    def authenticate(self, context: grpc.aio.ServicerContext) -> None:
        """What the real router does first on every call: the key must be one it knows."""
        authorization = dict(context.invocation_metadata()).get("authorization", "")
        if authorization.removeprefix("Bearer ") not in self.api_keys:
            raise InvalidApiKeyError("Incorrect API key provided.")

    async def Generate(self, request, context):
        self.authenticate(context)
        call = Call(request, dict(context.invocation_metadata()))
        self.calls.append(call)
        self.new_call.set()
        call.started.set()
        try:
            async for event in self.script(request, context):
                yield event
        except asyncio.CancelledError:
            call.cancelled.set()
            raise

    async def ListModels(self, request, context):
        self.authenticate(context)
        return router_pb2.ListModelsResponse(models=self.models)

    async def GetModel(self, request, context):
        self.authenticate(context)
        for model in self.models:
            if model.id == request.id:
                return router_pb2.GetModelResponse(model=model)
        raise ModelNotFoundError(request.id)

    async def Authenticate(self, request, context):
        self.key_checks += 1
        self.authenticate(context)
        return router_pb2.AuthenticateResponse()

    async def next_call(self) -> Call:
        """The next Generate call to reach the router."""
        await asyncio.wait_for(self.new_call.wait(), HANG_GUARD)
        self.new_call = asyncio.Event()
        return self.calls[-1]


class NotFoundError(ServiceError):
    """The router's answer for a logged request that does not exist: NOT_FOUND, no reason."""

    code = grpc.StatusCode.NOT_FOUND


class FakeAccounts(accounts_grpc.AccountsServiceServicer):
    """AccountsService as the router serves it, answering what a test sets and remembering what
    it was asked, with the metadata it came with."""

    def __init__(self, router: FakeRouter) -> None:
        self._router = router
        self.asked: list[tuple[object, dict[str, str]]] = []
        self.usage = accounts_pb2.GetUsageResponse()
        self.page = accounts_pb2.ListRequestsResponse()
        self.records: dict[str, accounts_pb2.RequestRecord] = {}

    def reset(self) -> None:
        self.__init__(self._router)

    def _asked(self, request, context) -> None:
        self._router.authenticate(context)
        self.asked.append((request, dict(context.invocation_metadata())))

    async def GetUsage(self, request, context):
        self._asked(request, context)
        return self.usage

    async def ListRequests(self, request, context):
        self._asked(request, context)
        return self.page

    async def GetRequest(self, request, context):
        self._asked(request, context)
        if request.request_id not in self.records:
            raise NotFoundError(f"No request with id '{request.request_id}'.")
        return accounts_pb2.GetRequestResponse(request=self.records[request.request_id])


@dataclass
class Edge:
    base_url: str
    router: FakeRouter
    server: EdgeServer

    def openai(self, api_key: str = API_KEY, **kw) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key=api_key, max_retries=0, **kw)

    def http(self, **kw) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=HANG_GUARD, **kw)

    async def post(self, path: str, body: dict, headers: dict | None = None) -> httpx.Response:
        async with self.http() as http:
            return await http.post(path, json=body, headers={**AUTH, **(headers or {})})

    async def stream_events(self, path: str, body: dict, headers: dict | None = None) -> list[dict]:
        """The JSON events of an SSE response, in order; asserts the framing and the final [DONE]."""
        events, done = [], False
        async with self.http() as http:
            async with http.stream("POST", path, json=body, headers={**AUTH, **(headers or {})}) as response:
                assert response.status_code == 200, await response.aread()
                assert response.headers["content-type"].startswith("text/event-stream")
                assert response.headers["cache-control"] == "no-store"
                assert response.headers["x-accel-buffering"] == "no"
                raw = (await response.aread()).decode()
        assert raw.endswith("\n\n")
        for block in raw.split("\n\n")[:-1]:
            assert block.startswith("data: "), block
            assert not done, "data after [DONE]"
            payload = block.removeprefix("data: ")
            if payload == "[DONE]":
                done = True
            else:
                events.append(json.loads(payload))
        assert done, "the stream did not end with [DONE]"
        return events


async def start_router() -> tuple[GrpcServer, FakeRouter]:
    fake = FakeRouter()
    server = GrpcServer(
        [
            router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name,
            accounts_pb2.DESCRIPTOR.services_by_name["AccountsService"].full_name,
        ],
        "127.0.0.1:0",
    )
    router_grpc.add_RouterServiceServicer_to_server(fake, server.server)
    accounts_grpc.add_AccountsServiceServicer_to_server(fake.accounts, server.server)
    await server.start()
    return server, fake


async def start_edge(router_port: int, **settings) -> EdgeServer:
    settings = {
        "host": "127.0.0.1",
        "port": 0,
        "router_address": f"127.0.0.1:{router_port}",
        "shutdown_grace_seconds": 1,
        **settings,
    }
    server = EdgeServer(EdgeSettings(**settings))
    await server.start()
    return server


@pytest.fixture(scope="session")
async def router_server() -> AsyncIterator[tuple[GrpcServer, FakeRouter]]:
    server, fake = await start_router()
    yield server, fake
    await server.stop(0)


@pytest.fixture(scope="session")
async def edge_server(router_server) -> AsyncIterator[EdgeServer]:
    server = await start_edge(router_server[0].port)
    yield server
    await server.stop()


@pytest.fixture
async def edge(router_server, edge_server) -> Edge:
    fake = router_server[1]
    fake.reset()
    return Edge(f"http://127.0.0.1:{edge_server.port}", fake, edge_server)
