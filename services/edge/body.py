"""Reading a request body under the edge's size limit (EdgeSettings.max_body_bytes).

A body over the limit is refused with 413 before it is read whole: at once when its Content-Length
says so, else as soon as the bytes received pass the limit. Without this, a multi-megabyte prompt
would be buffered, parsed and sent on to the router and an engine only to be refused there as too
long for any context window.
"""

from __future__ import annotations

from starlette.requests import Request

from services.edge.errors import ApiError


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, f"The request body is larger than the limit of {limit} bytes.", code="request_too_large"
    )


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)
