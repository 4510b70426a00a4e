"""Real EngineServers with the sim backend on port 0, and a client that collects a Generate stream
into what a caller would look at (text, tokens, logprobs, tool calls, finish, usage per choice)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import pytest

from services.common.errors import RemoteError
from services.engine.server import EngineServer
from services.engine.settings import EngineSettings
from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from switchyard.engine.v1 import engine_service_pb2_grpc as engine_pb2_grpc
from switchyard.inference.v1 import inference_pb2

MODEL = "switchyard/sim"


@dataclass
class Choice:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[inference_pb2.TokenLogprob] = field(default_factory=list)
    tool_calls: list[inference_pb2.ToolCallDelta] = field(default_factory=list)
    finish_reason: int = inference_pb2.FINISH_REASON_UNSPECIFIED
    stop_reason: str = ""

    @property
    def finish(self) -> str:
        return inference_pb2.FinishReason.Name(self.finish_reason).removeprefix("FINISH_REASON_").lower()


@dataclass
class Generation:
    events: list[engine_pb2.GenerateResponse]
    choices: dict[int, Choice]
    usage: inference_pb2.Usage

    @property
    def text(self) -> str:
        return self.choices[0].text


def request(
    prompt: str | None = "Once upon a time",
    *,
    chat: inference_pb2.Chat | None = None,
    model: str = "",
    request_id: str = "",
    **sampling,
) -> engine_pb2.GenerateRequest:
    generation_input = inference_pb2.GenerationInput(sampling=inference_pb2.SamplingParams(**sampling))
    if chat is not None:
        generation_input.chat.CopyFrom(chat)
    elif prompt is not None:
        generation_input.prompt.text = prompt
    return engine_pb2.GenerateRequest(request_id=request_id, model=model, input=generation_input)


def collect(events: list[engine_pb2.GenerateResponse]) -> Generation:
    choices: dict[int, Choice] = {}
    usage = inference_pb2.Usage()
    for event in events:
        if event.HasField("finished"):
            usage = event.finished.usage
            continue
        delta = event.delta
        choice = choices.setdefault(delta.index, Choice())
        choice.text += delta.text
        choice.token_ids += delta.token_ids
        choice.logprobs += delta.logprobs
        choice.tool_calls += delta.tool_calls
        if delta.finish_reason:
            choice.finish_reason, choice.stop_reason = delta.finish_reason, delta.stop_reason
    return Generation(events, choices, usage)


class EngineClient:
    def __init__(self, server: EngineServer, channel: grpc.aio.Channel) -> None:
        self.server = server
        self.channel = channel
        self.stub = engine_pb2_grpc.EngineServiceStub(channel)

    async def generate(self, generate_request: engine_pb2.GenerateRequest | None = None, **kw) -> Generation:
        call = self.stub.Generate(generate_request or request(**kw))
        return collect([event async for event in call])

    async def error(self, generate_request: engine_pb2.GenerateRequest) -> RemoteError:
        """The RemoteError a request ends with (fails the test if it succeeds)."""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in self.stub.Generate(generate_request):
                pass
        return RemoteError.from_rpc_error(caught.value)

    async def load(self) -> engine_pb2.GetLoadResponse:
        return await self.stub.GetLoad(engine_pb2.GetLoadRequest())

    async def wait_for_load(
        self, condition: Callable[[engine_pb2.GetLoadResponse], bool], within: float = 5.0
    ) -> engine_pb2.GetLoadResponse:
        """Polls GetLoad until `condition` holds, for at most `within` seconds; returns the last report."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        load = await self.load()
        while not condition(load) and loop.time() < deadline:
            await asyncio.sleep(0.01)
            load = await self.load()
        return load


@contextlib.asynccontextmanager
async def running_engine(**settings) -> AsyncIterator[EngineClient]:
    """An EngineServer on port 0 (settings as EngineSettings fields; `sim` as a dict)."""
    settings.setdefault("health_check_interval_seconds", 0.02)
    server = EngineServer(EngineSettings(port=0, **settings))
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield EngineClient(server, channel)
    finally:
        await channel.close()
        await server.stop(0)
