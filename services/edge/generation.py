"""Routed generations as the edge consumes them: router Generate calls, primed, iterated, cancelled.

A generation is opened by reading its first event before any HTTP header goes out, so that what
the router refuses up front (unknown model, bad key, no credits) still answers with its own HTTP
status rather than a 200 stream that carries an error. Every exit path cancels the call (a no-op
once it has finished), which is how a client gone or a deadline passed reaches the engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from services.edge.errors import from_rpc_error
from services.edge.router_client import Metadata, RouterClient
from switchyard.inference.v1 import inference_pb2 as inference
from switchyard.router.v1 import router_service_pb2 as router_pb2

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
