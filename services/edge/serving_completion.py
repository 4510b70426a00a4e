"""POST /v1/completions: one routed generation per prompt, answered as one OpenAI completion.

Several prompts fan out to concurrent router calls; choice j of prompt i becomes index i * n + j,
and usage (and the request breakdown) add up over the prompts.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from starlette.responses import Response

from services.edge import translate
from services.edge.context import RequestContext
from services.edge.generation import Generation, gather_or_cancel, interleave, open_generations
from services.edge.protocol import CompletionRequest
from services.edge.router_client import RouterClient
from services.edge.serving import (
    event_stream,
    incomplete,
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
        generate_requests = translate.completion_generate_requests(request, ctx.request_id)
        generations = await open_generations(
            self._router,
            generate_requests,
            metadata=[ctx.metadata(generate_request.request_id) for generate_request in generate_requests],
            grpc_timeout=ctx.timeout_for(request.timeout),
        )
        response_id, created = translate.response_id("cmpl"), int(time.time())
        if request.stream:
            encoder = ChunkEncoder(
                id=response_id,
                object="text_completion",
                created=created,
                model=generations[0].model,
                include_usage=request.include_usage,
            )
            chunks = self._chunks(request, generations, encoder, ctx)
            stream = EventStreamResponse(event_stream(chunks, generations, ctx.request_id))
            return with_rate_limit_headers(stream, generations)
        try:
            choices = await self._collect(request, generations, ctx.request_id)
        finally:
            for generation in generations:
                generation.cancel()
        usage = total_usage(generations, ctx.request_id)
        ctx.access.record_usage(usage)
        response = {
            "id": response_id,
            "object": "text_completion",
            "created": created,
            "model": generations[0].model,
            "choices": [choice.build() for choice in choices],
            "usage": translate.usage_dict(usage),
        }
        breakdown = _breakdown(request, generations, choices[0].text)
        if breakdown is not None:
            response["request_breakdown"] = breakdown
        return with_rate_limit_headers(json_response(response), generations)

    @staticmethod
    async def _collect(
        request: CompletionRequest, generations: Sequence[Generation], request_id: str
    ) -> list[translate.CompletionChoiceBuilder]:
        n = request.n
        choices = [
            translate.CompletionChoiceBuilder(index, logprobs=request.logprobs is not None)
            for index in range(n * len(generations))
        ]

        async def collect(generation: Generation, first_index: int) -> None:
            async for delta in generation.deltas():
                choices[first_index + delta.index].add(delta)

        await gather_or_cancel([collect(generation, i * n) for i, generation in enumerate(generations)])
        if any(choice.finish_reason is None for choice in choices):
            raise incomplete(request_id)
        return choices

    @staticmethod
    async def _chunks(
        request: CompletionRequest,
        generations: Sequence[Generation],
        encoder: ChunkEncoder,
        ctx: RequestContext,
    ) -> AsyncGenerator[bytes, None]:
        n = request.n
        # Per choice, the characters streamed so far: logprobs' text_offset counts from there.
        text_lengths = [0] * (n * len(generations)) if request.logprobs is not None else None
        first_choice_text: list[str] | None = (
            [] if request.request_breakdown and not request.disable_log else None
        )
        unfinished = n * len(generations)
        last: bytes | None = None
        async for position, delta in interleave([generation.deltas() for generation in generations]):
            if not delta.text and not delta.finish_reason and not delta.logprobs:
                continue
            index = position * n + delta.index
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
        usage = total_usage(generations, ctx.request_id)
        ctx.access.record_usage(usage)
        if last is not None:
            yield last
        breakdown = _breakdown(request, generations, "".join(first_choice_text or ()))
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
    request: CompletionRequest, generations: Sequence[Generation], first_choice_text: str
) -> dict[str, Any] | None:
    if not request.request_breakdown:
        return None
    breakdowns = [generation.breakdown for generation in generations if generation.breakdown is not None]
    if len(breakdowns) != len(generations):
        return None  # the router did not report one (it should, when asked)
    return translate.breakdown_dict(
        translate.merge_breakdowns(breakdowns),
        metadata=request.metadata,
        logged=translate.completion_logged_text(request, first_choice_text),
    )
