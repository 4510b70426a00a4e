"""Mid-stream resume: what the client has been sent, and the request that continues it elsewhere.

When an engine fails after tokens went out, the router continues each unfinished choice on another
replica with a request whose input is the original input plus the text already sent:
- completions: the prompt followed by the choice's text so far;
- token prompts: the prompt's token ids followed by the ids already sent (exact);
- chat: the conversation plus an assistant message holding the text so far, rendered with
  `continue_final_message` (and no generation prompt) so the model continues that message rather
  than starting a new one; an assistant message the caller already asked to continue is extended.
max_tokens and min_tokens shrink by the tokens already sent; n is 1 (choices are resumed one after
another, their deltas keeping their original index); echo is off (the prompt was already echoed).

Semantics the client can observe: one uninterrupted stream per choice. The continuation is sampled
afresh from the same context, so a seed no longer reproduces the text, logprobs of later tokens come
from the new replica (they are still the logprobs of the tokens sent, given what precedes them), and
a stop string that straddles the failure point is not detected. Requests that cannot be resumed
faithfully are not: echo (the prompt text is inside the first delta), tool calls already streamed, and
JSON response formats (the grammar would restart mid-document).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from services.router.registry import ModelEntry
from switchyard.inference.v1 import inference_pb2
from switchyard.router.v1 import router_service_pb2 as router_pb2

_RESPONSE_FORMAT = inference_pb2.ResponseFormat
_JSON_FORMATS = (_RESPONSE_FORMAT.TYPE_JSON_OBJECT, _RESPONSE_FORMAT.TYPE_JSON_SCHEMA)


@dataclass(slots=True)
class ChoiceProgress:
    """One choice as the client has seen it so far."""

    texts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    tokens: int = 0
    finished: bool = False
    tool_calls: bool = False

    @property
    def text(self) -> str:
        return "".join(self.texts)


class Transcript:
    """The delta events sent to the client, kept serialized (the hot path only appends bytes) and
    parsed when a stream has to be resumed or its usage recounted."""

    def __init__(self) -> None:
        self._events: list[bytes] = []
        # (index of the first event, model) per engine call that sent deltas.
        self._segments: list[tuple[int, ModelEntry]] = []

    def __len__(self) -> int:
        return len(self._events)

    def begin(self, model: ModelEntry) -> None:
        """Marks that the following events come from a call to `model`."""
        self._segments.append((len(self._events), model))

    def append(self, event: bytes) -> None:
        self._events.append(event)

    def _deltas(self, start: int = 0, end: int | None = None):
        for raw in self._events[start:end]:
            yield router_pb2.GenerateResponse.FromString(raw).delta

    def deltas(self) -> list[inference_pb2.TokenDelta]:
        """Every delta sent, parsed (for the response cache and the request log)."""
        return list(self._deltas())

    def choices(self) -> dict[int, ChoiceProgress]:
        progress: dict[int, ChoiceProgress] = {}
        for delta in self._deltas():
            choice = progress.setdefault(delta.index, ChoiceProgress())
            choice.texts.append(delta.text)
            choice.token_ids.extend(delta.token_ids)
            choice.tokens += delta_tokens(delta)
            choice.finished |= delta.finish_reason != inference_pb2.FINISH_REASON_UNSPECIFIED
            choice.tool_calls |= len(delta.tool_calls) > 0
        return progress

    def tokens_by_model(self) -> list[tuple[ModelEntry, int]]:
        """Completion tokens sent per engine call, with the model that produced them."""
        bounds = [start for start, _ in self._segments[1:]] + [len(self._events)]
        return [
            (model, sum(delta_tokens(delta) for delta in self._deltas(start, end)))
            for (start, model), end in zip(self._segments, bounds, strict=True)
        ]


def delta_tokens(delta: inference_pb2.TokenDelta) -> int:
    """Tokens a delta carries: its token ids when the engine sends them, else one per non-empty text."""
    return len(delta.token_ids) or (1 if delta.text or delta.tool_calls else 0)


def resume_blocker(original: inference_pb2.GenerationInput, choice: ChoiceProgress) -> str:
    """Why this choice cannot be continued faithfully elsewhere, or ""."""
    if original.sampling.echo:
        return "echo"
    if choice.tool_calls:
        return "tool calls were streamed"
    which = original.WhichOneof("input")
    if which == "chat" and original.chat.response_format.type in _JSON_FORMATS:
        return "a JSON response format"
    if which == "tokens" and choice.tokens and not choice.token_ids:
        return "the engine sent no token ids to continue a token prompt from"
    return ""


def continuation_input(
    original: inference_pb2.GenerationInput, choice: ChoiceProgress
) -> inference_pb2.GenerationInput | None:
    """The input that continues `choice` (see the module docstring); None when its token budget is
    already spent."""
    continued = inference_pb2.GenerationInput()
    continued.CopyFrom(original)
    sampling = continued.sampling
    if sampling.HasField("max_tokens"):
        left = sampling.max_tokens - choice.tokens
        if left <= 0:
            return None
        sampling.max_tokens = left
    sampling.min_tokens = max(0, sampling.min_tokens - choice.tokens)
    sampling.n = 1
    sampling.ClearField("best_of")
    sampling.echo = False
    if not choice.tokens:
        return continued

    which = continued.WhichOneof("input")
    if which == "tokens":
        continued.tokens.token_ids.extend(choice.token_ids)
    elif which == "chat":
        _continue_chat(continued.chat, choice.text)
    else:
        continued.prompt.text += choice.text
    return continued


def _continue_chat(chat: inference_pb2.Chat, text: str) -> None:
    kwargs = json.loads(chat.chat_template_kwargs_json) if chat.HasField("chat_template_kwargs_json") else {}
    last = chat.messages[-1] if chat.messages else None
    if kwargs.get("continue_final_message") and last is not None and last.role == "assistant":
        if last.parts:
            last.parts.add(text=text)
        else:
            last.content = (last.content if last.HasField("content") else "") + text
    else:
        chat.messages.add(role="assistant", content=text)
    kwargs["continue_final_message"] = True
    kwargs["add_generation_prompt"] = False
    chat.chat_template_kwargs_json = json.dumps(kwargs)
