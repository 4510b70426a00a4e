"""vLLM's outputs as the contract's Generate events. This is the per-token path: each event is
filled in place from vLLM's objects, with no intermediate models and no message copies.
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionNamedToolChoiceParam,
    ChatCompletionRequest,
)
from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput
from vllm.parser import Parser

from services.common.errors import EngineUnavailableError
from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from switchyard.inference.v1 import inference_pb2

_FINISH_REASONS = {
    "stop": inference_pb2.FINISH_REASON_STOP,
    "length": inference_pb2.FINISH_REASON_LENGTH,
}
# vLLM's own server clamps -inf (a token masked out of the prompt distribution) the same way, so
# that the value survives JSON.
_MIN_LOGPROB = -9999.0

PositionLogprobs = dict[int, Logprob]


class ChatParsing:
    """How one chat's output is parsed (tool calls, reasoning): the request vLLM's parser reads, and
    how tool calls finish."""

    __slots__ = ("named_choice", "request", "single_call")

    def __init__(self, request: ChatCompletionRequest) -> None:
        self.request = request
        # OpenAI finishes a forced (named) call with "stop", other calls with "tool_calls".
        self.named_choice = isinstance(request.tool_choice, ChatCompletionNamedToolChoiceParam)
        self.single_call = request.parallel_tool_calls is False


class ChoiceStream:
    """One choice's deltas. `event()` takes each vLLM output of this choice in order (DELTA kind:
    new tokens and text only) and returns the event to send, or None when there is nothing new."""

    __slots__ = (
        "_called_tools",
        "_chat",
        "_parser",
        "_prompt_token_ids",
        "_top_logprobs",
        "index",
        "tokens",
    )

    def __init__(
        self,
        index: int,
        *,
        top_logprobs: int | None,
        parser: Parser | None = None,
        chat: ChatParsing | None = None,
        prompt_token_ids: list[int] | None = None,
    ) -> None:
        self.index = index
        self.tokens = 0
        self._top_logprobs = top_logprobs
        self._parser = parser
        self._chat = chat
        self._prompt_token_ids = prompt_token_ids
        self._called_tools = False

    def event(self, output: CompletionOutput) -> engine_pb2.GenerateResponse | None:
        token_ids = output.token_ids
        finish = output.finish_reason
        if not token_ids and not output.text and finish is None:
            return None
        self.tokens += len(token_ids)
        event = engine_pb2.GenerateResponse()
        delta = event.delta
        delta.index = self.index
        delta.token_ids.extend(token_ids)
        if self._parser is None:
            delta.text = output.text
        else:
            self._parse_into(delta, output.text, list(token_ids), finished=finish is not None)
        if self._top_logprobs is not None and output.logprobs:
            delta.logprobs.extend(token_logprobs(token_ids, output.logprobs, self._top_logprobs))
        if finish is not None:
            delta.finish_reason = self._finish_reason(finish)
            if isinstance(output.stop_reason, str):
                delta.stop_reason = output.stop_reason
        return event

    def finish_only(self) -> engine_pb2.GenerateResponse:
        """This choice's end with nothing in it: echo with max_tokens 0, where the one token
        generated to score the prompt is not returned."""
        event = engine_pb2.GenerateResponse()
        event.delta.index = self.index
        event.delta.finish_reason = inference_pb2.FINISH_REASON_LENGTH
        return event

    def _parse_into(
        self, delta: inference_pb2.TokenDelta, text: str, token_ids: list[int], *, finished: bool
    ) -> None:
        assert self._parser is not None and self._chat is not None
        message = self._parser.parse_delta(
            delta_text=text,
            delta_token_ids=token_ids,
            request=self._chat.request,
            # Read once, on the first delta, to see whether the prompt already closed reasoning.
            prompt_token_ids=self._prompt_token_ids,
            finished=finished,
        )
        self._prompt_token_ids = None
        if message is None:
            return
        if message.content:
            delta.text = message.content
        if message.reasoning:
            delta.reasoning = message.reasoning
        for call in message.tool_calls:
            if self._chat.single_call and call.index > 0:
                continue  # parallel_tool_calls=false: the first call only, as vLLM's server does
            self._called_tools = True
            out = delta.tool_calls.add(index=call.index)
            if call.id:
                out.id = call.id
            if call.function is not None:
                if call.function.name:
                    out.function_name = call.function.name
                out.function_arguments = call.function.arguments or ""

    def _finish_reason(self, finish: str) -> int:
        reason = _FINISH_REASONS.get(finish)
        if reason is None:
            # "abort" (the engine dropped the request) or "error" (a retryable failure, such as a
            # KV-cache load): another replica may well succeed.
            raise EngineUnavailableError(f"the engine ended the generation early ({finish})")
        if reason == inference_pb2.FINISH_REASON_STOP and self._called_tools and not self._chat.named_choice:
            return inference_pb2.FINISH_REASON_TOOL_CALLS
        return reason


def token_logprobs(
    token_ids: Sequence[int], positions: Sequence[PositionLogprobs | None], top: int
) -> list[inference_pb2.TokenLogprob]:
    """One TokenLogprob per token: the chosen token's logprob and the `top` most likely tokens at
    its position. A position without logprobs (the first prompt token) has its logprob unset."""
    out = []
    for token_id, position in zip(token_ids, positions, strict=True):
        if position is None:
            out.append(inference_pb2.TokenLogprob(token_id=token_id))
            continue
        chosen = position[token_id]
        token = chosen.decoded_token or ""
        entry = inference_pb2.TokenLogprob(
            token=token,
            logprob=max(chosen.logprob, _MIN_LOGPROB),
            bytes=token.encode(),
            token_id=token_id,
        )
        if top:
            # vLLM puts the chosen token first, then ranks 1..top (the chosen one may be among them).
            ranked = sorted(position.items(), key=lambda item: item[1].rank)[:top]
            entry.top_logprobs.extend(
                inference_pb2.TopLogprob(
                    token=alt.decoded_token or "",
                    logprob=max(alt.logprob, _MIN_LOGPROB),
                    bytes=(alt.decoded_token or "").encode(),
                    token_id=alt_id,
                )
                for alt_id, alt in ranked
            )
        out.append(entry)
    return out


def echo_delta(
    index: int,
    prompt_text: str,
    prompt_token_ids: list[int],
    prompt_logprobs: Sequence[PositionLogprobs | None] | None,
    top: int | None,
    first_token: str,
) -> engine_pb2.GenerateResponse:
    """The prompt as a choice's first delta (echo). Its token ids stay out of `token_ids`, which
    count generated tokens; the logprobs name them. `first_token` is the text of the first prompt
    token, which has no logprob and therefore no decoded text from vLLM."""
    event = engine_pb2.GenerateResponse()
    delta = event.delta
    delta.index = index
    delta.text = prompt_text
    if top is not None and prompt_logprobs:
        delta.logprobs.extend(token_logprobs(prompt_token_ids, prompt_logprobs, top))
        delta.logprobs[0].token = first_token
        delta.logprobs[0].bytes = first_token.encode()
    return event


def best_candidates(candidates: Sequence[CompletionOutput], n: int) -> list[CompletionOutput]:
    """The `n` complete candidates with the highest cumulative logprob, best first."""
    return sorted(candidates, key=lambda c: c.cumulative_logprob or 0.0, reverse=True)[:n]
