"""POST /v1/completions: one routed generation, answered as one OpenAI completion.

Several prompts are still one router call (its `batch`), so they are one request for rate limits,
credits and the request log, as OpenAI counts them; the router numbers choice j of prompt i
i * n + j and sums the usage and the breakdown over the prompts.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

from starlette.responses import Response

from services.edge import translate
from services.edge.context import RequestContext
from services.edge.generation import Generation
from services.edge.protocol import CompletionRequest
from services.edge.router_client import RouterClient
from services.edge.serving import (
    collect_choices,
    event_stream,
    json_response,
    parse_authenticated,
    total_usage,
    with_rate_limit_headers,
)
from services.edge.sse import ChunkEncoder, EventStreamResponse

_FINISH_REASONS = translate.FINISH_REASONS


class CompletionServing:
    def __init__(self, router: RouterClient) -> None:
        self._router = router

    async def create(self, body: bytes, ctx: RequestContext) -> Response:
        request = await parse_authenticated(self._router, body, CompletionRequest, ctx)
        generation = await Generation.open(
            self._router,
            translate.completion_generate_request(request, ctx.request_id),
            metadata=ctx.metadata(),
            grpc_timeout=ctx.timeout_for(request.timeout),
        )
        response_id, created = translate.response_id("cmpl"), int(time.time())
        if request.stream:
            encoder = ChunkEncoder(
                id=response_id,
                object="text_completion",
                created=created,
                model=generation.model,
                include_usage=request.include_usage,
            )
            chunks = self._chunks(request, generation, encoder, ctx)
            stream = EventStreamResponse(event_stream(chunks, generation, ctx.request_id))
            return with_rate_limit_headers(stream, generation)
        choices = [
            translate.CompletionChoiceBuilder(index, logprobs=request.logprobs is not None)
            for index in range(request.n * len(request.prompts()))
        ]
        usage = await collect_choices(generation, choices, ctx)
        response = {
            "id": response_id,
            "object": "text_completion",
            "created": created,
            "model": generation.model,
            "choices": [choice.build() for choice in choices],
            "usage": translate.usage_dict(usage),
        }
        breakdown = _breakdown(request, generation, choices[0].text)
        if breakdown is not None:
            response["request_breakdown"] = breakdown
        return with_rate_limit_headers(json_response(response), generation)

    @staticmethod
    async def _chunks(
        request: CompletionRequest,
        generation: Generation,
        encoder: ChunkEncoder,
        ctx: RequestContext,
    ) -> AsyncGenerator[bytes, None]:
        choice_count = request.n * len(request.prompts())
        # Per choice, the characters streamed so far: logprobs' text_offset counts from there.
        text_lengths = [0] * choice_count if request.logprobs is not None else None
        first_choice_text: list[str] | None = (
            [] if request.request_breakdown and not request.disable_log else None
        )
        unfinished = choice_count
        last: bytes | None = None
        async for delta in generation.deltas():
            if not delta.text and not delta.finish_reason and not delta.logprobs:
                continue
            index = delta.index
            logprobs = None
            if text_lengths is not None:
                entries = translate.CompletionLogprobs()
                entries.extend(delta.logprobs, text_lengths[index])
                text_lengths[index] += len(delta.text)
                logprobs = entries.as_dict()
            if first_choice_text is not None and index == 0:
                first_choice_text.append(delta.text)
            chunk = encoder.choice(
                {
                    "index": index,
                    "text": delta.text,
                    "logprobs": logprobs,
                    "finish_reason": _FINISH_REASONS.get(delta.finish_reason),
                }
            )
            if delta.finish_reason:
                unfinished -= 1
                if not unfinished:
                    # Held until the router's `finished` event (see serving_chat: never a
                    # finish_reason followed by an error).
                    last = chunk
                    continue
            yield chunk
        usage = total_usage(generation, ctx.request_id)
        ctx.access.record_usage(usage)
        if last is not None:
            yield last
        breakdown = _breakdown(request, generation, "".join(first_choice_text or ()))
        if breakdown is not None:
            # Its own chunk with an empty text and no finish_reason, so that every choice still has
            # exactly one finish_reason; it keeps the stream's id (see serving_chat for why).
            yield encoder.choice(
                {
                    "index": 0,
                    "text": "",
                    "logprobs": None,
                    "finish_reason": None,
                    "request_breakdown": breakdown,
                }
            )
        if request.include_usage:
            yield encoder.usage(translate.usage_dict(usage))


def _breakdown(
    request: CompletionRequest, generation: Generation, first_choice_text: str
) -> dict[str, Any] | None:
    if not request.request_breakdown or generation.breakdown is None:
        return None  # not asked for, or the router did not report one (it should, when asked)
    return translate.breakdown_dict(
        generation.breakdown,
        metadata=request.metadata,
        logged=translate.completion_logged_text(request, first_choice_text),
    )
