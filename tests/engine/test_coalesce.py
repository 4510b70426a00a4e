"""coalesce_deltas and merge_deltas alone: a scripted backend (an async generator the test paces) and
a consumer that is either waiting for each delta or busy while several pile up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from services.common.errors import EngineUnavailableError
from services.engine.coalesce import coalesce_deltas, merge_deltas
from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from switchyard.inference.v1 import inference_pb2

STOP = inference_pb2.FINISH_REASON_STOP
LENGTH = inference_pb2.FINISH_REASON_LENGTH


def delta_event(index: int = 0, text: str = "", token_ids=(), **fields) -> engine_pb2.GenerateResponse:
    return engine_pb2.GenerateResponse(
        delta=inference_pb2.TokenDelta(index=index, text=text, token_ids=token_ids, **fields)
    )


def finished_event(completion_tokens: int) -> engine_pb2.GenerateResponse:
    return engine_pb2.GenerateResponse(
        finished=engine_pb2.GenerateFinished(usage=inference_pb2.Usage(completion_tokens=completion_tokens))
    )


def logprob(token: str, value: float) -> inference_pb2.TokenLogprob:
    return inference_pb2.TokenLogprob(
        token=token, logprob=value, token_id=ord(token[0]), top_logprobs=[{"token": token, "logprob": value}]
    )


class ScriptedBackend:
    """Yields `events`; after those whose position is in `pause_after` it waits until the test lets
    it go on (`release`), so the test decides whether the consumer is waiting or busy when a delta is
    produced. Without pauses it produces everything at once, as a zero-latency engine does."""

    def __init__(
        self,
        events: list[engine_pb2.GenerateResponse],
        *,
        pause_after: range | tuple[int, ...] = (),
        error: Exception | None = None,
        then_hang: bool = False,
    ) -> None:
        self.events = events
        self.pause_after = pause_after
        self.error = error
        self.then_hang = then_hang
        self.produced = 0
        self.all_produced = asyncio.Event()
        self.closed = asyncio.Event()
        self._go_on = asyncio.Event()

    def release(self) -> None:
        self._go_on.set()

    async def generate(self) -> AsyncIterator[engine_pb2.GenerateResponse]:
        try:
            for position, event in enumerate(self.events):
                yield event
                self.produced += 1
                if position in self.pause_after:
                    await self._go_on.wait()
                    self._go_on.clear()
            if self.error is not None:
                raise self.error
            self.all_produced.set()
            if self.then_hang:
                await asyncio.Event().wait()
        finally:
            self.closed.set()


async def test_a_consumer_that_keeps_up_gets_every_delta_alone_and_unchanged():
    events = [delta_event(text=word, token_ids=[i]) for i, word in enumerate(["a", " b", " c"])]
    events.append(finished_event(3))
    backend = ScriptedBackend(events, pause_after=range(len(events)))
    received = []
    async with contextlib.aclosing(coalesce_deltas(backend.generate())) as stream:
        async for event in stream:
            received.append(event)
            backend.release()  # the next delta is produced only now: the consumer is waiting for it
    assert [id(event) for event in received] == [id(event) for event in events]


async def test_deltas_that_pile_up_while_the_consumer_is_busy_merge_per_choice():
    events = [
        delta_event(0, "Hel", [1], logprobs=[logprob("Hel", -0.1)]),
        delta_event(1, "Wor", [7], logprobs=[logprob("Wor", -0.7)]),
        delta_event(0, "lo", [2], logprobs=[logprob("lo", -0.2)]),
        delta_event(1, "ld", [8], logprobs=[logprob("ld", -0.8)], finish_reason=LENGTH),
        delta_event(0, "!", [3], logprobs=[logprob("!", -0.3)], finish_reason=STOP, stop_reason="\n"),
        finished_event(5),
    ]
    backend = ScriptedBackend(events, pause_after=(0,))
    stream = coalesce_deltas(backend.generate())
    first = await anext(stream)
    assert first is events[0]
    # The consumer is busy (not reading) until the backend has produced everything else.
    backend.release()
    await backend.all_produced.wait()
    rest = [event async for event in stream]

    assert [event.WhichOneof("event") for event in rest] == ["delta", "delta", "finished"]
    choice_1, choice_0, finished = rest
    assert choice_1.delta.index == 1 and choice_0.delta.index == 0
    assert (choice_1.delta.text, list(choice_1.delta.token_ids)) == ("World", [7, 8])
    assert choice_1.delta.finish_reason == LENGTH
    assert (choice_0.delta.text, list(choice_0.delta.token_ids)) == ("lo!", [2, 3])
    assert [entry.token for entry in choice_0.delta.logprobs] == ["lo", "!"]
    assert [entry.logprob for entry in choice_0.delta.logprobs] == pytest.approx([-0.2, -0.3])
    assert [entry.top_logprobs[0].token for entry in choice_0.delta.logprobs] == ["lo", "!"]
    assert (choice_0.delta.finish_reason, choice_0.delta.stop_reason) == (STOP, "\n")
    assert finished is events[-1]


def tool_piece(token_id: int, index: int, arguments: str, **start) -> inference_pb2.TokenDelta:
    call = inference_pb2.ToolCallDelta(index=index, function_arguments=arguments, **start)
    return inference_pb2.TokenDelta(token_ids=[token_id], tool_calls=[call])


def test_merged_tool_call_pieces_continue_their_call_and_a_new_call_starts_its_own_entry():
    deltas = [
        tool_piece(1, 0, "", id="call_a", function_name="f"),
        tool_piece(2, 0, '{"x":'),
        tool_piece(3, 0, " 1}"),
        tool_piece(4, 1, "{}", id="call_b", function_name="g"),
        inference_pb2.TokenDelta(token_ids=[5], finish_reason=inference_pb2.FINISH_REASON_TOOL_CALLS),
    ]
    merged = inference_pb2.TokenDelta()
    merge_deltas(deltas, merged)
    calls = [(call.index, call.id, call.function_name, call.function_arguments) for call in merged.tool_calls]
    assert calls == [(0, "call_a", "f", '{"x": 1}'), (1, "call_b", "g", "{}")]
    assert list(merged.token_ids) == [1, 2, 3, 4, 5]
    assert merged.finish_reason == inference_pb2.FINISH_REASON_TOOL_CALLS


def test_merged_reasoning_and_text_keep_their_order():
    merged = inference_pb2.TokenDelta()
    merge_deltas(
        [
            inference_pb2.TokenDelta(index=2, token_ids=[1], reasoning="think"),
            inference_pb2.TokenDelta(index=2, token_ids=[2], reasoning="ing"),
            inference_pb2.TokenDelta(index=2, token_ids=[3], text="Yes"),
        ],
        merged,
    )
    assert (merged.index, merged.reasoning, merged.text) == (2, "thinking", "Yes")


async def test_deltas_without_token_ids_are_not_merged_so_each_still_counts_as_a_token():
    # A backend that cannot count tokens: the router counts one token per delta that has text.
    events = [delta_event(text=word) for word in ["a", " b", " c"]] + [finished_event(3)]
    backend = ScriptedBackend(events)
    stream = coalesce_deltas(backend.generate())
    received = [event async for event in stream]
    assert [event.delta.text for event in received[:-1]] == ["a", " b", " c"]


async def test_a_backend_error_comes_after_the_deltas_produced_before_it():
    events = [delta_event(text=word, token_ids=[i]) for i, word in enumerate(["a", " b", " c"])]
    backend = ScriptedBackend(events, pause_after=(0,), error=EngineUnavailableError("the engine died"))
    stream = coalesce_deltas(backend.generate())
    texts = [(await anext(stream)).delta.text]
    backend.release()
    await backend.closed.wait()
    with pytest.raises(EngineUnavailableError):
        async for event in stream:
            texts.append(event.delta.text)
    assert texts == ["a", " b c"]


async def test_closing_the_stream_stops_the_backend_before_close_returns():
    events = [delta_event(text="a", token_ids=[1]), delta_event(text="b", token_ids=[2])]
    backend = ScriptedBackend(events, pause_after=(0,))
    stream = coalesce_deltas(backend.generate())
    await anext(stream)
    await stream.aclose()
    assert backend.closed.is_set()
    assert backend.produced == 1, "the backend generated nothing after the consumer left"


async def test_cancelling_the_consumer_stops_the_backend():
    backend = ScriptedBackend([delta_event(text="a", token_ids=[1])], then_hang=True)

    async def consume() -> None:
        async with contextlib.aclosing(coalesce_deltas(backend.generate())) as stream:
            async for _ in stream:
                pass

    consumer = asyncio.create_task(consume())
    await backend.all_produced.wait()  # the backend is still running; the consumer waits for more
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert backend.closed.is_set()


async def test_a_backend_that_stops_without_an_error_or_a_finish_ends_the_stream():
    async def cancelled_from_within() -> AsyncIterator[engine_pb2.GenerateResponse]:
        yield delta_event(text="a", token_ids=[1])
        raise asyncio.CancelledError  # not the consumer's doing: it still waits for output

    async with asyncio.timeout(10):  # a bound on the failure (a hang), not a synchronisation
        events = [event async for event in coalesce_deltas(cancelled_from_within())]
    assert [event.delta.text for event in events] == ["a"]
