"""EngineServicer: the gRPC face of one GenerationBackend. Thin by design: it names the request,
hands it to the backend and passes the events on, merging the deltas that pile up while the stream
is busy sending (services.engine.coalesce); the interceptor (services.common.grpc_server) maps the
backend's typed errors to statuses, and gRPC itself ends a call whose deadline passed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

import grpc
from google.protobuf import text_format

from services.common.errors import EngineUnavailableError
from services.engine.backends.base import GenerationBackend
from services.engine.coalesce import coalesce_deltas
from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from switchyard.engine.v1 import engine_service_pb2_grpc as engine_pb2_grpc
from switchyard.inference.v1 import inference_pb2

logger = logging.getLogger(__name__)

REQUEST_ID_METADATA_KEY = "x-request-id"


class EngineServicer(engine_pb2_grpc.EngineServiceServicer):
    def __init__(self, backend: GenerationBackend) -> None:
        self._backend = backend
        # False while draining or once the backend died: new generations are refused (UNAVAILABLE) so
        # that callers go to another replica instead of queueing here.
        self.accepting = True
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def drain(self, grace: float) -> None:
        """Refuses new generations and waits up to `grace` seconds for the running ones to end."""
        self.accepting = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._idle.wait()

    async def Generate(
        self, request: engine_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[engine_pb2.GenerateResponse]:
        if not self.accepting:
            raise EngineUnavailableError(
                "The engine is draining or its backend is down; try another replica."
            )
        if not request.request_id:
            request.request_id = _request_id_from(context) or uuid.uuid4().hex
        normalize_sampling(request.input.sampling)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "generate %s input: %s", request.request_id, text_format.MessageToString(request.input)
            )
        self._in_flight += 1
        self._idle.clear()
        started, outcome = time.perf_counter(), "cancelled"
        finish_reasons: list[int] = []
        streamed_tokens = 0
        usage = inference_pb2.Usage()
        try:
            async with contextlib.aclosing(coalesce_deltas(self._backend.generate(request))) as events:
                async for event in events:
                    delta = event.delta
                    streamed_tokens += len(delta.token_ids)
                    if delta.finish_reason:
                        finish_reasons.append(delta.finish_reason)
                    elif event.HasField("finished"):
                        usage = event.finished.usage
                    yield event
            outcome = "ok"
        except Exception as error:
            outcome = type(error).__name__
            raise
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
            logger.info(
                "generate %s %s prompt_tokens=%d completion_tokens=%d cached_tokens=%d finish=%s %.1fms",
                request.request_id,
                outcome,
                usage.prompt_tokens,
                usage.completion_tokens or streamed_tokens,
                usage.cached_tokens,
                ",".join(_finish_name(reason) for reason in finish_reasons) or "-",
                (time.perf_counter() - started) * 1000,
            )

    async def GetModelInfo(
        self, request: engine_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.GetModelInfoResponse:
        return await self._backend.model_info()

    async def GetLoad(
        self, request: engine_pb2.GetLoadRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.GetLoadResponse:
        load = await self._backend.load()
        load.serving = load.serving and self.accepting
        return load


def normalize_sampling(sampling: inference_pb2.SamplingParams) -> None:
    """Rewrites, in place, what OpenAI allows but the backends do not take as such, so that every
    backend behaves alike: `top_p: 0` (OpenAI's range is [0, 1]; vLLM and the sim want (0, 1])
    keeps only the most likely token, which is greedy decoding, so it becomes temperature 0."""
    if sampling.HasField("top_p") and sampling.top_p == 0:
        sampling.ClearField("top_p")
        sampling.temperature = 0.0


def _request_id_from(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_METADATA_KEY:
            return value
    return None


def _finish_name(reason: int) -> str:
    return inference_pb2.FinishReason.Name(reason).removeprefix("FINISH_REASON_").lower()
