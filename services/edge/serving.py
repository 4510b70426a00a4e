"""What the endpoint servings share: parsing a body into its wire model, JSON bodies, and ending
an event stream the OpenAI way whatever happens."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Protocol, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from services.edge.context import RequestContext
from services.edge.errors import (
    ApiError,
    from_invalid_parameter,
    from_validation_error,
    internal_error,
)
from services.edge.generation import Generation
from services.edge.protocol import InvalidParameter, unknown_fields
from services.edge.router_client import RouterClient
from services.edge.sse import DONE, error_event
from switchyard.inference.v1 import inference_pb2 as inference

logger = logging.getLogger(__name__)

RequestModel = TypeVar("RequestModel", bound=BaseModel)


def parse_request(body: bytes, model: type[RequestModel], request_id: str) -> RequestModel:
    """The body as `model`, or a 400 ApiError naming the offending parameter."""
    try:
        request = model.model_validate_json(body)
    except ValidationError as error:
        raise from_validation_error(error) from None
    except InvalidParameter as error:
        raise from_invalid_parameter(error) from None
    if request.model_extra:
        logger.debug("request %s: ignoring unknown fields %s", request_id, unknown_fields(request))
    return request


async def parse_authenticated(
    router: RouterClient, body: bytes, model: type[RequestModel], ctx: RequestContext
) -> RequestModel:
    """`parse_request`, with OpenAI's order of refusals: a wrong key is a 401 whatever the body.

    The router owns keys and Generate checks the key itself, so a body that parses costs no extra
    call. Only a body about to be refused is held until the router has confirmed the key
    (RouterService.Authenticate, served from the router's key cache). If the router cannot say
    (unavailable), the body's own 400 stands: it is true, and more useful than a 503.
    """
    try:
        return parse_request(body, model, ctx.request_id)
    except ApiError as refusal:
        raise (await _key_refusal(router, ctx) or refusal) from None


# A key check is a lookup in the router's key cache (or one indexed query): it never needs the
# request's own timeout, which may be minutes.
KEY_CHECK_TIMEOUT_SECONDS = 5.0


async def _key_refusal(router: RouterClient, ctx: RequestContext) -> ApiError | None:
    try:
        await router.authenticate(
            metadata=ctx.metadata(), grpc_timeout=min(ctx.timeout, KEY_CHECK_TIMEOUT_SECONDS)
        )
    except ApiError as error:
        if error.status == 401:
            return error
        logger.warning("request %s: could not check the key (%d): %s", ctx.request_id, error.status, error)
    return None


def json_response(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def with_rate_limit_headers(response: Response, generation: Generation) -> Response:
    """Adds OpenAI's x-ratelimit-* headers as the router sent them for this request."""
    response.headers.update(generation.rate_limit_headers)
    return response


def incomplete(request_id: str) -> ApiError:
    """The router's stream ended OK without finishing every choice or without usage: a broken
    contract, so the caller gets a generic 500 and the log says which request."""
    logger.error("request %s: the router's stream ended without finishing every choice", request_id)
    return internal_error()


def total_usage(generation: Generation, request_id: str) -> inference.Usage:
    """The request's usage; raises if the generation never finished."""
    if generation.usage is None:
        raise incomplete(request_id)
    return generation.usage


class ChoiceBuilder(Protocol):
    """translate.CompletionChoiceBuilder or translate.ChatChoiceBuilder."""

    finish_reason: str | None

    def add(self, delta: inference.TokenDelta) -> None: ...


async def collect_choices(
    generation: Generation, choices: Sequence[ChoiceBuilder], ctx: RequestContext
) -> inference.Usage:
    """A non-streamed answer: every delta fed to its choice's builder; returns the usage once every
    choice finished (a 500 if the router's stream broke its contract)."""
    try:
        async for delta in generation.deltas():
            choices[delta.index].add(delta)
    finally:
        generation.cancel()
    if any(choice.finish_reason is None for choice in choices):
        raise incomplete(ctx.request_id)
    usage = total_usage(generation, ctx.request_id)
    ctx.access.record_usage(usage)
    return usage


async def event_stream(
    chunks: AsyncGenerator[bytes, None], generation: Generation, request_id: str
) -> AsyncGenerator[bytes, None]:
    """Passes `chunks` on and ends the stream: an error after the headers went out becomes one
    `data: {"error": ...}` event, then `data: [DONE]`; whatever ends it cancels the router call.
    Cancellation (client gone) is not caught: nothing more is sent to nobody."""
    try:
        async for chunk in chunks:
            yield chunk
    except ApiError as error:
        yield error_event(error)
    except Exception:
        logger.exception("request %s: stream failed", request_id)
        yield error_event(internal_error())
    finally:
        generation.cancel()
    yield DONE
