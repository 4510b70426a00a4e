"""Noticing that the HTTP client has gone, so that its generation is cancelled rather than finished
for nobody. Uvicorn does not cancel a request's task when the client disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import Receive

T = TypeVar("T")


async def wait_for_disconnect(receive: Receive) -> None:
    """Returns when the client has disconnected. Call only after the request body was read."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(receive: Receive, work: Coroutine[Any, Any, T]) -> T | None:
    """Runs `work` until it finishes or the client goes, whichever comes first. In the second case
    `work` is cancelled (and with it its router call) and the result is None."""
    working = asyncio.ensure_future(work)
    watching = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait((working, watching), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        working.cancel()  # no-op once finished
        # Let both finish their cleanup (the router call's cancel) before the response goes on.
        await asyncio.gather(working, watching, return_exceptions=True)
    return None if working.cancelled() else working.result()
