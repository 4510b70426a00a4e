"""Routed generations as the edge consumes them: router Generate calls, primed, iterated, cancelled.

A generation is opened by reading its first event before any HTTP header goes out, so that what
the router refuses up front (unknown model, bad key, no credits) still answers with its own HTTP
status rather than a 200 stream that carries an error. Every exit path cancels the call (a no-op
once it has finished), which is how a client gone or a deadline passed reaches the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TypeVar

import grpc

from services.edge.errors import from_rpc_error
from services.edge.router_client import Metadata, RouterClient
from switchyard.inference.v1 import inference_pb2 as inference
from switchyard.router.v1 import router_service_pb2 as router_pb2

T = TypeVar("T")

# What responses name the model when the router did not say (it always should: `routed` comes first).
REDACTED = "redacted"


class Generation:
    """One router Generate call. Iterate `deltas()` once; afterwards `usage` (and `breakdown`, when
    asked for) hold what the `finished` event said, or stay None if the stream ended without one.
    `rate_limit_headers` are the x-ratelimit-* values the router sent as initial metadata.

    `finished` is the last event by contract, so iteration ends with it, without waiting for the
    call's OK status (the call then completes by itself, uncancelled)."""

    __slots__ = ("_call", "_pending", "breakdown", "model", "rate_limit_headers", "usage")

    def __init__(
        self, call: grpc.aio.UnaryStreamCall, first: object, rate_limit_headers: dict[str, str] | None = None
    ) -> None:
        self._call = call
        self._pending = first
        self.rate_limit_headers = rate_limit_headers or {}
        self.model = REDACTED
        self.usage: inference.Usage | None = None
        self.breakdown: router_pb2.RequestBreakdown | None = None
        if isinstance(first, router_pb2.GenerateResponse) and first.WhichOneof("event") == "routed":
            self.model = first.routed.model
            self._pending = None

    @classmethod
    async def open(
        cls,
        router: RouterClient,
        request: router_pb2.GenerateRequest,
        *,
        metadata: Metadata,
        grpc_timeout: float,
    ) -> Generation:
        call = router.generate(request, metadata=metadata, grpc_timeout=grpc_timeout)
        try:
            first = await call.read()
            # Sent before the first event, so already here.
            initial = await call.initial_metadata()
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        except BaseException:
            call.cancel()
            raise
        limits = {name: value for name, value in initial or () if name.startswith("x-ratelimit-")}
        return cls(call, first, limits)

    async def deltas(self) -> AsyncIterator[inference.TokenDelta]:
        call = self._call
        event, self._pending = self._pending, None
        try:
            while True:
                if event is None:
                    event = await call.read()
                if event is grpc.aio.EOF:
                    return
                kind = event.WhichOneof("event")
                if kind == "delta":
                    yield event.delta
                elif kind == "finished":
                    if event.finished.HasField("breakdown"):
                        self.breakdown = event.finished.breakdown
                    self.usage = event.finished.usage
                    return
                elif kind == "routed":
                    self.model = event.routed.model
                event = None
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Cancels the call unless it has finished (a finished call is left to complete on its own)."""
        if self.usage is None:
            self._call.cancel()


async def open_generations(
    router: RouterClient,
    requests: Sequence[router_pb2.GenerateRequest],
    *,
    metadata: Sequence[Metadata],
    grpc_timeout: float,
) -> list[Generation]:
    """Opens one generation per request, concurrently; if any fails, none is left running."""
    if len(requests) == 1:
        return [await Generation.open(router, requests[0], metadata=metadata[0], grpc_timeout=grpc_timeout)]
    tasks = [
        asyncio.ensure_future(
            Generation.open(router, request, metadata=request_metadata, grpc_timeout=grpc_timeout)
        )
        for request, request_metadata in zip(requests, metadata, strict=True)
    ]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is None:
                task.result().cancel()
        raise


async def gather_or_cancel(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """asyncio.gather that cancels the others as soon as one fails (gather alone leaves them running)."""
    if len(awaitables) == 1:
        return [await awaitables[0]]
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def interleave(iterators: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Items of several async iterators as they arrive, each with its iterator's position.

    Streams the prompts of one completions request side by side. With one iterator (the usual case)
    it is a plain loop; otherwise one pending `anext` task per iterator, all cancelled on exit.
    """
    if len(iterators) == 1:
        async for item in iterators[0]:
            yield 0, item
        return
    pending = {
        asyncio.ensure_future(anext(iterator)): position for position, iterator in enumerate(iterators)
    }
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                position = pending.pop(task)
                try:
                    item = task.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(anext(iterators[position]))] = position
                yield position, item
    finally:
        # A task cancelled before it ran never resumed its iterator, so this does not close the
        # iterators: whoever owns the generations cancels their calls (Generation.cancel).
        for task in pending:
            task.cancel()
