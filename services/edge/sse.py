"""Server-sent events exactly as OpenAI streams them: `data: {json}\\n\\n` ... `data: [DONE]\\n\\n`.

Chunks of one stream share id, object, created and model, so that head is serialised once and each
chunk splices its choices in (no pydantic, no whole-chunk serialisation per token).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from services.edge.connection import wait_for_disconnect
from services.edge.errors import ApiError

DONE = b"data: [DONE]\n\n"

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def error_event(error: ApiError) -> bytes:
    """An error after the stream started: the OpenAI error object as one event (then [DONE])."""
    return b"data: " + orjson.dumps(error.body()) + b"\n\n"


class ChunkEncoder:
    """Frames the chunks of one stream.

    With `include_usage`, every chunk carries `"usage": null` and `usage()` frames the last one, with
    empty choices; without it, chunks have no usage key at all (as OpenAI streams them).
    """

    __slots__ = ("_prefix", "_suffix", "_usage_prefix")

    def __init__(self, *, id: str, object: str, created: int, model: str, include_usage: bool) -> None:
        head = orjson.dumps({"id": id, "object": object, "created": created, "model": model})[:-1]
        self._prefix = b"data: " + head + b',"choices":['
        self._suffix = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"
        self._usage_prefix = b"data: " + head + b',"choices":[],"usage":'

    def choice(self, choice: dict[str, Any]) -> bytes:
        return b"".join((self._prefix, orjson.dumps(choice), self._suffix))

    def usage(self, usage: dict[str, Any]) -> bytes:
        return b"".join((self._usage_prefix, orjson.dumps(usage), b"}\n\n"))


class EventStreamResponse(Response):
    """A text/event-stream response that stops (and closes its event iterator) when the client goes.

    Starlette's StreamingResponse notices a disconnect only on the next write under ASGI 2.4, and
    leaves a cancelled iterator for the garbage collector to close. Here the client is watched the
    whole time, even while the router is silent (a long prefill), and the iterator is closed at
    once, so its `finally` cancels the router call at the moment the client leaves.
    """

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[bytes, None]) -> None:
        self.events = events
        self.status_code = 200
        self.background = None
        self.init_headers(SSE_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sending = asyncio.ensure_future(self._send_events(send))
        watching = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait((sending, watching), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            sending.cancel()
            # The iterator can only be closed once the task that runs it has stopped.
            await asyncio.wait((sending,))
            await self.events.aclose()
        if not sending.cancelled() and sending.exception() is not None:
            raise sending.exception()  # type: ignore[misc]

    async def _send_events(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for event in self.events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
