"""Deltas the gRPC writer has not caught up with, merged into one message per choice.

Every message costs grpc.aio (and each hop after it: router, edge, client) a fixed amount of work,
far more than a token's own bytes. vLLM's AsyncLLM answers the same problem with its
RequestOutputCollector: DELTA outputs the consumer has not taken yet are merged, so a consumer that
falls behind catches up in one step. `coalesce_deltas` does that between a backend and the gRPC
stream: the backend runs in a task of its own and puts its events here; whenever the writer is ready
for the next message it takes everything produced since the last one, merged per choice.

What a client sees does not change: per choice, the merged delta's text, token ids, logprobs, tool
call pieces and reasoning are the deltas' own, concatenated in order, and the finish (reason, stop
reason) is the last one's. Nothing waits for a token to merge it with another: while the writer
keeps up, each delta goes out alone, as it came (the same object). Deltas that have text but no
token ids (a backend that cannot count them) are never merged, so that counting one token per such
delta, as the router does, stays right.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from switchyard.inference.v1 import inference_pb2

# merge_deltas handles each of these; a field added to TokenDelta must be added there too.
_MERGED_FIELDS = frozenset(
    {"index", "text", "token_ids", "logprobs", "tool_calls", "finish_reason", "stop_reason", "reasoning"}
)
if set(inference_pb2.TokenDelta.DESCRIPTOR.fields_by_name) != _MERGED_FIELDS:
    raise ImportError("TokenDelta changed: teach services/engine/coalesce.py:merge_deltas its new fields")


def merge_deltas(deltas: Sequence[inference_pb2.TokenDelta], into: inference_pb2.TokenDelta) -> None:
    """Writes into the empty `into` what the consecutive `deltas` of one choice say together."""
    into.index = deltas[0].index
    into.text = "".join([delta.text for delta in deltas])
    into.reasoning = "".join([delta.reasoning for delta in deltas])
    for delta in deltas:
        into.token_ids.extend(delta.token_ids)
        into.logprobs.extend(delta.logprobs)
        for piece in delta.tool_calls:
            last = into.tool_calls[-1] if into.tool_calls else None
            # A piece without id or name continues the call before it: its arguments are appended.
            if (
                last is not None
                and last.index == piece.index
                and not piece.HasField("id")
                and not piece.HasField("function_name")
            ):
                last.function_arguments += piece.function_arguments
            else:
                into.tool_calls.add().CopyFrom(piece)
    last_delta = deltas[-1]
    into.finish_reason = last_delta.finish_reason
    into.stop_reason = last_delta.stop_reason


def _countable(delta: inference_pb2.TokenDelta) -> bool:
    """Whether the delta's tokens are counted by its token ids (true too when it has no content)."""
    return bool(delta.token_ids) or not (delta.text or delta.tool_calls)


class DeltaCollector:
    """The events a backend produced and the writer has not taken yet (vLLM's RequestOutputCollector
    for a stream of deltas). `put` and `end` are the producer's side, `take` the writer's."""

    __slots__ = ("_done", "_error", "_finished", "_pending", "_ready")

    def __init__(self) -> None:
        # Per choice index (in order of first appearance), its deltas not taken yet, as runs of
        # mergeable deltas (each run a list of events).
        self._pending: dict[int, list[list[engine_pb2.GenerateResponse]]] = {}
        self._finished: engine_pb2.GenerateResponse | None = None
        self._done = False
        self._error: Exception | None = None
        self._ready = asyncio.Event()

    def put(self, event: engine_pb2.GenerateResponse) -> None:
        if event.HasField("delta"):
            delta = event.delta
            runs = self._pending.get(delta.index)
            if runs is None:
                self._pending[delta.index] = [[event]]
            elif _countable(delta) and _countable(runs[-1][-1].delta):
                runs[-1].append(event)
            else:
                runs.append([event])
        else:
            self._finished = event
        self._ready.set()

    def end(self, error: Exception | None = None) -> None:
        """The backend is done; `error` is what it raised, if anything."""
        self._done = True
        self._error = error
        self._ready.set()

    async def take(self) -> list[engine_pb2.GenerateResponse]:
        """Waits for output and returns all of it: per choice its deltas merged (one event per run),
        then the backend's `finished` event if it has come. Returns [] once the backend is done and
        everything was taken; raises the backend's error once every delta produced before it was."""
        while not self._pending and self._finished is None and not self._done:
            self._ready.clear()
            await self._ready.wait()
        events = []
        for runs in self._pending.values():
            for run in runs:
                if len(run) == 1:
                    events.append(run[0])
                else:
                    merged = engine_pb2.GenerateResponse()
                    merge_deltas([event.delta for event in run], merged.delta)
                    events.append(merged)
        self._pending.clear()
        if self._finished is not None:
            events.append(self._finished)
            self._finished = None
        if not events and self._error is not None:
            raise self._error
        return events


async def _produce(events: AsyncIterator[engine_pb2.GenerateResponse], collector: DeltaCollector) -> None:
    error = None
    try:
        async with contextlib.aclosing(events):
            async for event in events:
                collector.put(event)
    except Exception as caught:
        error = caught
    finally:
        # However the backend stops (even cancelled by something other than coalesce_deltas), the
        # writer learns that nothing more will come rather than waiting for ever.
        collector.end(error)


async def coalesce_deltas(
    events: AsyncIterator[engine_pb2.GenerateResponse],
) -> AsyncIterator[engine_pb2.GenerateResponse]:
    """`events` (a backend's generate stream), with the deltas that pile up while the consumer is
    busy merged per choice (see the module docstring). The backend runs in a task owned by this
    generator: closing or cancelling the generator cancels that task and waits for it, so the backend
    sees the cancellation (and aborts its request) before this generator has finished closing."""
    collector = DeltaCollector()
    producer = asyncio.create_task(_produce(events, collector))
    try:
        while taken := await collector.take():
            for event in taken:
                yield event
    finally:
        if not producer.done():
            producer.cancel()
            await asyncio.wait((producer,))
