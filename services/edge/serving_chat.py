"""POST /v1/chat/completions: one routed generation, answered as an OpenAI chat completion.

Streaming with `request_breakdown: true` sends the breakdown in a last chunk (before the usage
chunk), in `choices[0].request_breakdown` as seed 003 shows it, with two deliberate differences:
the chunk keeps the stream's own id (seed 003 uses the id "request_breakdown", which breaks the
OpenAI SDK's rule that every chunk of a stream shares one id), and it has an empty delta and a null
finish_reason, so that every choice still has exactly one finish_reason.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

from starlette.responses import Response

from services.edge import translate
from services.edge.context import RequestContext
from services.edge.generation import Generation
from services.edge.protocol import ChatCompletionRequest
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


def forces_a_function(request: ChatCompletionRequest) -> bool:
    """tool_choice names a function (or legacy function_call did)."""
    return request.tool_choice is not None and not isinstance(request.tool_choice, str)


def _named_call_finish(reason: str | None) -> str | None:
    """OpenAI ends a choice whose function tool_choice forced with "stop", not "tool_calls" (while
    "required" and "auto" calls end with "tool_calls"), streamed or not; clients branch on it."""
    return "stop" if reason == "tool_calls" else reason


class ChatServing:
    def __init__(self, router: RouterClient) -> None:
        self._router = router

    async def create(self, body: bytes, ctx: RequestContext) -> Response:
        request = await parse_authenticated(self._router, body, ChatCompletionRequest, ctx)
        generation = await Generation.open(
            self._router,
            translate.chat_generate_request(request, ctx.request_id),
            metadata=ctx.metadata(),
            grpc_timeout=ctx.timeout_for(request.timeout),
        )
        response_id, created = translate.response_id("chatcmpl"), int(time.time())
        if request.stream:
            encoder = ChunkEncoder(
                id=response_id,
                object="chat.completion.chunk",
                created=created,
                model=generation.model,
                include_usage=request.include_usage,
            )
            chunks = self._chunks(request, generation, encoder, ctx)
            stream = EventStreamResponse(event_stream(chunks, generation, ctx.request_id))
            return with_rate_limit_headers(stream, generation)

        choices = [
            translate.ChatChoiceBuilder(index, logprobs=request.logprobs) for index in range(request.n)
        ]
        usage = await collect_choices(generation, choices, ctx)
        built = [choice.build() for choice in choices]
        if forces_a_function(request):
            for choice in built:
                choice["finish_reason"] = _named_call_finish(choice["finish_reason"])
        response = {
            "id": response_id,
            "object": "chat.completion",
            "created": created,
            "model": generation.model,
            "choices": built,
            "usage": translate.usage_dict(usage),
        }
        breakdown = _breakdown(request, generation, built[0]["message"])
        if breakdown is not None:
            response["request_breakdown"] = breakdown
        return with_rate_limit_headers(json_response(response), generation)

    @staticmethod
    async def _chunks(
        request: ChatCompletionRequest, generation: Generation, encoder: ChunkEncoder, ctx: RequestContext
    ) -> AsyncGenerator[bytes, None]:
        with_logprobs = request.logprobs
        first_choice_text: list[str] | None = (
            [] if request.request_breakdown and not request.disable_log else None
        )
        # Choices whose role delta is still to be sent. It waits for their first output because, as
        # OpenAI streams it, a text choice opens with its own {"role", "content": ""} chunk while a
        # tool call carries the role itself with content null (so the OpenAI SDK's accumulated
        # message has content None, not "").
        unopened = [True] * request.n
        finish = _FINISH_REASONS.get
        if forces_a_function(request):

            def finish(reason: int) -> str | None:
                return _named_call_finish(_FINISH_REASONS.get(reason))

        unfinished = request.n
        last: bytes | None = None
        async for delta in generation.deltas():
            content: dict[str, Any] = {}
            if delta.text:
                content["content"] = delta.text
                if first_choice_text is not None and delta.index == 0:
                    first_choice_text.append(delta.text)
            if delta.reasoning:
                content["reasoning"] = delta.reasoning
            if delta.tool_calls:
                content["tool_calls"] = translate.tool_call_chunks(delta.tool_calls)
            if unopened[delta.index]:
                unopened[delta.index] = False
                if "tool_calls" in content and "content" not in content:
                    content = {"role": "assistant", "content": None, **content}
                else:
                    yield encoder.choice(
                        {
                            "index": delta.index,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    )
            if not content and not delta.finish_reason and not delta.logprobs:
                continue
            logprobs = None
            if with_logprobs:
                logprobs = {"content": translate.chat_logprobs_content(delta.logprobs), "refusal": None}
            chunk = encoder.choice(
                {
                    "index": delta.index,
                    "delta": content,
                    "logprobs": logprobs,
                    "finish_reason": finish(delta.finish_reason),
                }
            )
            if delta.finish_reason:
                unfinished -= 1
                if not unfinished:
                    # The last finish_reason waits for the router's `finished` event: if the call fails
                    # in between (its deadline passes), the client gets the error instead of a
                    # finish_reason followed by an error.
                    last = chunk
                    continue
            yield chunk
        usage = total_usage(generation, ctx.request_id)
        ctx.access.record_usage(usage)
        if last is not None:
            yield last
        completion_message = {"role": "assistant", "content": "".join(first_choice_text or ())}
        breakdown = _breakdown(request, generation, completion_message)
        if breakdown is not None:
            yield encoder.choice(
                {
                    "index": 0,
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": None,
                    "request_breakdown": breakdown,
                }
            )
        if request.include_usage:
            yield encoder.usage(translate.usage_dict(usage))


def _breakdown(
    request: ChatCompletionRequest, generation: Generation, completion_message: dict[str, Any]
) -> dict[str, Any] | None:
    if not request.request_breakdown or generation.breakdown is None:
        return None
    return translate.breakdown_dict(
        generation.breakdown,
        metadata=request.metadata,
        logged=translate.chat_logged_messages(request, completion_message),
    )
