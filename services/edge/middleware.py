"""The outermost layer of the edge's own code: request ids, the access log, and the last line of
defence against an error nobody handled."""

from __future__ import annotations

import logging
import re
import time
import uuid

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.edge.context import AccessRecord
from services.edge.errors import internal_error

logger = logging.getLogger(__name__)

# A caller's id is reused only if it is safe in logs and in gRPC metadata.
_USABLE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
# Per route and status; per request, never per token. Labels are route templates, so ids in paths
# (and whatever unknown paths callers try) cannot grow the series without bound.
REQUESTS = Counter("switchyard_edge_requests", "HTTP requests by path and status.", ["path", "status"])
LATENCY = Histogram(
    "switchyard_edge_request_seconds",
    "HTTP requests from arrival to the end of the response (the whole stream, when streaming).",
    ["path"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)

# Probes poll these every few seconds; their lines would drown the requests.
_QUIET_PATHS = frozenset({"/health"})


_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/usage", "/v1/requests"})


def _route_label(path: str) -> str:
    if path in _ROUTES:
        return path
    for prefix in ("/v1/models/", "/v1/requests/"):
        if path.startswith(prefix):
            return prefix + "{id}"
    return "other"


def accepted_request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's x-request-id when usable, else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            if _USABLE_REQUEST_ID.fullmatch(value):
                return value.decode()
            break
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Gives every request an id (scope state "access", an AccessRecord), echoes it as the
    x-request-id response header, writes one access-log line per request (method, path, status,
    duration, id, tokens), and turns an exception nobody handled into a generic 500 error object:
    no stack trace or exception text ever reaches a client."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        access = AccessRecord(accepted_request_id(scope["headers"]))
        scope.setdefault("state", {})["access"] = access
        id_header = (b"x-request-id", access.request_id.encode())
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                access.status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("request %s: unhandled error", access.request_id)
            if access.status:
                raise  # the response has started: the server can only drop the connection
            await internal_error().response()(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            if scope["path"] not in _QUIET_PATHS:
                route = _route_label(scope["path"])
                REQUESTS.labels(route, str(access.status)).inc()
                LATENCY.labels(route).observe(elapsed)
            level = logging.DEBUG if scope["path"] in _QUIET_PATHS else logging.INFO
            logger.log(
                level,
                "%s %s %d %.1fms request_id=%s prompt_tokens=%d completion_tokens=%d",
                scope["method"],
                scope["path"],
                access.status,
                elapsed * 1000,
                access.request_id,
                access.prompt_tokens,
                access.completion_tokens,
            )
