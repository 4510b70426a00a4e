"""The HTTP routes: thin functions that take the request's context, read the body and hand over to
a serving."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from services.edge.auth import forwarded_api_key
from services.edge.body import read_body
from services.edge.connection import until_disconnected
from services.edge.context import CACHE_HEADER, AccessRecord, RequestContext
from services.edge.errors import ApiError
from services.edge.serving import json_response
from services.edge.state import EdgeState

router = APIRouter()


def _edge(request: Request) -> EdgeState:
    return request.app.state.edge


def _timeout(header: str | None, limit: float) -> float:
    """The edge's limit, or less when the x-request-timeout header (seconds) asks for less."""
    if header is None:
        return limit
    try:
        seconds = float(header)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ApiError(400, "The x-request-timeout header must be a positive number of seconds.")
    return min(limit, seconds)


async def request_context(request: Request) -> RequestContext:
    edge = _edge(request)
    access: AccessRecord = request.state.access
    return RequestContext(
        request_id=access.request_id,
        api_key=forwarded_api_key(request.headers.get("authorization")),
        timeout=_timeout(request.headers.get("x-request-timeout"), edge.settings.request_timeout_seconds),
        access=access,
        cache_off=request.headers.get(CACHE_HEADER, "").strip().lower() == "off",
    )


# The request's id, the key to forward (401 without one; the router checks it) and the deadline.
Context = Annotated[RequestContext, Depends(request_context)]


def _client_gone() -> Response:
    # Nobody reads this; the status is for the access log (nginx's "client closed request").
    return Response(status_code=499)


@router.post("/v1/completions")
async def create_completion(request: Request, ctx: Context) -> Response:
    body = await read_body(request, _edge(request).settings.max_body_bytes)
    response = await until_disconnected(request.receive, _edge(request).completions.create(body, ctx))
    return response or _client_gone()


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request, ctx: Context) -> Response:
    body = await read_body(request, _edge(request).settings.max_body_bytes)
    response = await until_disconnected(request.receive, _edge(request).chat.create(body, ctx))
    return response or _client_gone()


@router.get("/v1/models")
async def list_models(request: Request, ctx: Context) -> Response:
    return await _edge(request).models.list(ctx)


# Model ids contain a slash (owner/name), hence the path converter.
@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request, ctx: Context) -> Response:
    return await _edge(request).models.retrieve(model_id, ctx)


@router.get("/v1/usage")
async def usage(request: Request, ctx: Context) -> Response:
    return await _edge(request).accounts.usage(request.query_params, ctx)


@router.get("/v1/requests")
async def list_requests(request: Request, ctx: Context) -> Response:
    return await _edge(request).accounts.list_requests(request.query_params, ctx)


@router.get("/v1/requests/{request_id}")
async def retrieve_request(request_id: str, request: Request, ctx: Context) -> Response:
    return await _edge(request).accounts.retrieve_request(request_id, ctx)


# HEAD too: load balancers and uptime checkers probe with it.
@router.api_route("/health", methods=["GET", "HEAD"])
async def health(request: Request) -> Response:
    """200 while the router's grpc.health.v1 reports RouterService SERVING, else 503. No key needed."""
    edge = _edge(request)
    if await edge.router.is_serving(grpc_timeout=edge.settings.health_timeout_seconds):
        return json_response({"status": "serving"})
    return ApiError(
        503, "The router is not serving.", type="server_error", headers={"Retry-After": "1"}
    ).response()
