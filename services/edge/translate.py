"""Pure translation between the OpenAI wire format and the router's protobuf contract.

Requests: a validated wire model -> a router GenerateRequest. Responses: TokenDelta / Usage /
RequestBreakdown -> the plain dicts of OpenAI's response objects. No I/O, no gRPC calls; the
builders here are fed by serving.py, the streaming chunk encoders by sse.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC
from typing import Any

import orjson

from services.edge.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    ChatTool,
    CompletionRequest,
    GenerationRequest,
    ImagePart,
    JsonObjectFormat,
    JsonSchemaFormat,
    RefusalPart,
    ResponseFormat,
    TextPart,
)
from switchyard.inference.v1 import inference_pb2 as inference
from switchyard.router.v1 import router_service_pb2 as router_pb2

# OpenAI's finish_reason by inference.v1.FinishReason value; UNSPECIFIED (still running) is null.
FINISH_REASONS: dict[int, str | None] = {
    inference.FINISH_REASON_UNSPECIFIED: None,
    inference.FINISH_REASON_STOP: "stop",
    inference.FINISH_REASON_LENGTH: "length",
    inference.FINISH_REASON_TOOL_CALLS: "tool_calls",
    inference.FINISH_REASON_CONTENT_FILTER: "content_filter",
}

_PREFERENCES = {
    "balanced": router_pb2.ROUTER_PREFERENCE_BALANCED,
    "powerful": router_pb2.ROUTER_PREFERENCE_POWERFUL,
    "efficient": router_pb2.ROUTER_PREFERENCE_EFFICIENT,
}
_PREFERENCE_NAMES = {value: name for name, value in _PREFERENCES.items()}

# OpenAI's stand-in for "less likely than anything reported" when a logprob is unknown.
_UNKNOWN_LOGPROB = -9999.0


# --- requests ------------------------------------------------------------------------------------


def _sampling(
    request: GenerationRequest,
    *,
    max_tokens: int | None,
    logprobs: int | None,
    best_of: int | None = None,
    echo: bool = False,
) -> inference.SamplingParams:
    # Unset optionals stay unset: the engine's default applies (temperature 0 is not "unset").
    optional = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "min_p": request.min_p,
        "repetition_penalty": request.repetition_penalty,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "max_tokens": max_tokens,
        "seed": request.seed,
        "best_of": best_of,
        "logprobs": logprobs,
        "skip_special_tokens": request.skip_special_tokens,
    }
    stop = request.stop
    return inference.SamplingParams(
        **{name: value for name, value in optional.items() if value is not None},
        stop=[stop] if isinstance(stop, str) else stop or (),
        stop_token_ids=request.stop_token_ids or (),
        min_tokens=request.min_tokens,
        ignore_eos=request.ignore_eos,
        n=request.n,
        echo=echo,
        logit_bias={int(token): bias for token, bias in (request.logit_bias or {}).items()},
        include_stop_str_in_output=request.include_stop_str_in_output,
    )


def _generate_request(
    request: GenerationRequest, request_id: str, generation_input: inference.GenerationInput | None
) -> router_pb2.GenerateRequest:
    message = router_pb2.GenerateRequest(
        request_id=request_id,
        model=request.explicit_model,
        input=generation_input,
        routing=router_pb2.RoutingOptions(
            preference=_PREFERENCES.get(
                request.router_preference or "", router_pb2.ROUTER_PREFERENCE_UNSPECIFIED
            ),
            models=request.models or (),
            fallback_models=request.fallback_models or (),
            exclude_models=request.exclude_models or (),
            exclude_providers=request.exclude_providers or (),
        ),
        # The hosted routers' customer_identifier, else OpenAI's `user`: both name the end user.
        customer_identifier=request.customer_identifier or request.user or "",
        request_breakdown=request.request_breakdown,
        disable_log=request.disable_log,
        stream=request.stream,
        disable_cache=not request.cache,
    )
    if request.metadata:
        message.metadata.update(request.metadata)
    return message


def completion_generate_request(request: CompletionRequest, request_id: str) -> router_pb2.GenerateRequest:
    """One router Generate for the whole request: a list of prompts goes as the router's `batch`,
    so that it is one request for rate limits, credits and the request log (as OpenAI counts it)."""
    sampling = _sampling(
        request,
        max_tokens=request.max_tokens,
        logprobs=request.logprobs,
        best_of=request.candidates,
        echo=request.echo,
    )
    inputs = [
        inference.GenerationInput(prompt=inference.TextPrompt(text=prompt), sampling=sampling)
        if isinstance(prompt, str)
        else inference.GenerationInput(tokens=inference.TokenPrompt(token_ids=prompt), sampling=sampling)
        for prompt in request.prompts()
    ]
    if len(inputs) == 1:
        return _generate_request(request, request_id, inputs[0])
    message = _generate_request(request, request_id, None)
    message.batch.extend(inputs)
    return message


def _content_part(part: TextPart | ImagePart | RefusalPart) -> inference.ContentPart:
    if isinstance(part, TextPart):
        return inference.ContentPart(text=part.text)
    if isinstance(part, RefusalPart):
        return inference.ContentPart(text=part.refusal)  # see RefusalPart
    return inference.ContentPart(
        image_url=inference.ImageUrl(url=part.image_url.url, detail=part.image_url.detail)
    )


def _chat_message(message: ChatMessage) -> inference.ChatMessage:
    converted = inference.ChatMessage(
        role=message.role,
        name=message.name,
        tool_call_id=message.tool_call_id,
        tool_calls=[
            inference.ToolCall(
                id=call.id, function_name=call.function.name, function_arguments=call.function.arguments
            )
            for call in message.tool_calls or ()
        ],
    )
    if isinstance(message.content, str):
        converted.content = message.content
    elif message.content is not None:
        converted.parts.extend(_content_part(part) for part in message.content)
    return converted


def _tool(tool: ChatTool) -> inference.Tool:
    function = tool.function
    return inference.Tool(
        name=function.name,
        description=function.description,
        parameters_json=None if function.parameters is None else orjson.dumps(function.parameters).decode(),
        strict=function.strict,
    )


def _response_format(response_format: ResponseFormat) -> inference.ResponseFormat:
    if isinstance(response_format, JsonSchemaFormat):
        spec = response_format.json_schema
        return inference.ResponseFormat(
            type=inference.ResponseFormat.TYPE_JSON_SCHEMA,
            json_schema=None if spec.schema_ is None else orjson.dumps(spec.schema_).decode(),
            schema_name=spec.name,
            strict=spec.strict,
        )
    if isinstance(response_format, JsonObjectFormat):
        return inference.ResponseFormat(type=inference.ResponseFormat.TYPE_JSON_OBJECT)
    return inference.ResponseFormat(type=inference.ResponseFormat.TYPE_TEXT)


def chat_generate_request(request: ChatCompletionRequest, request_id: str) -> router_pb2.GenerateRequest:
    chat = inference.Chat(
        messages=[_chat_message(message) for message in request.messages],
        tools=[_tool(tool) for tool in request.tools or ()],
        parallel_tool_calls=request.parallel_tool_calls,
    )
    choice = request.tool_choice
    if choice is not None:
        chat.tool_choice = choice if isinstance(choice, str) else choice.function.name
    if request.response_format is not None:
        chat.response_format.CopyFrom(_response_format(request.response_format))
    if request.chat_template_kwargs is not None:
        chat.chat_template_kwargs_json = orjson.dumps(request.chat_template_kwargs).decode()
    # Chat's logprobs is a switch; the engine's is a count of alternatives beside the chosen token.
    logprobs = (request.top_logprobs or 0) if request.logprobs else None
    sampling = _sampling(request, max_tokens=request.output_limit, logprobs=logprobs)
    return _generate_request(request, request_id, inference.GenerationInput(chat=chat, sampling=sampling))


# --- responses: ids ------------------------------------------------------------------------------


def response_id(prefix: str) -> str:
    """A response's own id ("chatcmpl-..."), unique per response as OpenAI's are. Not the request id:
    callers may reuse an x-request-id, which stays the correlation id (echoed, logged, forwarded)."""
    return f"{prefix}-{uuid.uuid4().hex}"


# --- responses: models ---------------------------------------------------------------------------


def model_object(model: router_pb2.Model) -> dict[str, Any]:
    """OpenAI's model object; `owned_by` is the owner in the id (owner/name), else the provider."""
    owner, slash, _ = model.id.partition("/")
    return {
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": owner if slash else model.provider,
        # vLLM's extension, read by clients that size prompts.
        "max_model_len": model.context_window,
    }


# --- responses: usage and logprobs ---------------------------------------------------------------


def usage_dict(usage: inference.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


class CompletionLogprobs:
    """OpenAI's legacy /v1/completions logprobs object, filled delta by delta.

    `top_logprobs` maps token -> logprob for the chosen token and its alternatives (OpenAI: "up to
    logprobs + 1 elements"). The first token of an echoed prompt has no context, hence no logprob:
    it is null in `token_logprobs` and `top_logprobs`, as OpenAI and vLLM answer.
    """

    __slots__ = ("text_offset", "token_logprobs", "tokens", "top_logprobs")

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []

    def extend(self, logprobs: Sequence[inference.TokenLogprob], text_offset: int) -> None:
        """`text_offset`: how many characters of the choice's text came before these tokens."""
        for entry in logprobs:
            self.tokens.append(entry.token)
            self.text_offset.append(text_offset)
            text_offset += len(entry.token)
            if entry.HasField("logprob"):
                top = {alternative.token: alternative.logprob for alternative in entry.top_logprobs}
                top.setdefault(entry.token, entry.logprob)
                self.token_logprobs.append(entry.logprob)
                self.top_logprobs.append(top)
            else:
                self.token_logprobs.append(None)
                self.top_logprobs.append(None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        }


def _token_bytes(token: str, raw: bytes) -> list[int]:
    return list(raw or token.encode())


def chat_logprobs_content(logprobs: Sequence[inference.TokenLogprob]) -> list[dict[str, Any]]:
    """Chat's `logprobs.content` entries: token, logprob, bytes and the top alternatives."""
    return [
        {
            "token": entry.token,
            "logprob": entry.logprob if entry.HasField("logprob") else _UNKNOWN_LOGPROB,
            "bytes": _token_bytes(entry.token, entry.bytes),
            "top_logprobs": [
                {"token": top.token, "logprob": top.logprob, "bytes": _token_bytes(top.token, top.bytes)}
                for top in entry.top_logprobs
            ],
        }
        for entry in logprobs
    ]


def tool_call_chunks(deltas: Sequence[inference.ToolCallDelta]) -> list[dict[str, Any]]:
    """Streamed tool calls: the first piece of a call carries its id and name, later ones arguments."""
    chunks = []
    for delta in deltas:
        chunk: dict[str, Any] = {"index": delta.index}
        function: dict[str, str] = {"arguments": delta.function_arguments}
        if delta.HasField("id"):
            chunk["id"] = delta.id
            chunk["type"] = "function"
        if delta.HasField("function_name"):
            function["name"] = delta.function_name
        chunk["function"] = function
        chunks.append(chunk)
    return chunks


# --- responses: whole choices (non-streaming) ----------------------------------------------------


class CompletionChoiceBuilder:
    """One /v1/completions choice, assembled from its deltas."""

    __slots__ = ("_logprobs", "_text", "_text_length", "finish_reason", "index")

    def __init__(self, index: int, *, logprobs: bool) -> None:
        self.index = index
        self._text: list[str] = []
        self._text_length = 0
        self._logprobs = CompletionLogprobs() if logprobs else None
        self.finish_reason: str | None = None

    def add(self, delta: inference.TokenDelta) -> None:
        if self._logprobs is not None:
            self._logprobs.extend(delta.logprobs, self._text_length)
        self._text.append(delta.text)
        self._text_length += len(delta.text)
        if delta.finish_reason:
            self.finish_reason = FINISH_REASONS.get(delta.finish_reason)

    @property
    def text(self) -> str:
        return "".join(self._text)

    def build(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "text": self.text,
            "logprobs": None if self._logprobs is None else self._logprobs.as_dict(),
            "finish_reason": self.finish_reason,
        }


class _ToolCallsBuilder:
    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, deltas: Sequence[inference.ToolCallDelta]) -> None:
        for delta in deltas:
            call = self._calls.get(delta.index)
            if call is None:
                call = self._calls[delta.index] = {
                    "id": "",
                    "type": "function",
                    "function": {"name": "", "arguments": ""},
                }
            if delta.HasField("id"):
                call["id"] = delta.id
            if delta.HasField("function_name"):
                call["function"]["name"] = delta.function_name
            call["function"]["arguments"] += delta.function_arguments

    def build(self) -> list[dict[str, Any]]:
        calls = [self._calls[index] for index in sorted(self._calls)]
        for call in calls:
            # Clients answer a call by its id, so every call needs one even if the engine sent none.
            call["id"] = call["id"] or f"call_{uuid.uuid4().hex[:24]}"
        return calls


class ChatChoiceBuilder:
    """One /v1/chat/completions choice, assembled from its deltas."""

    __slots__ = ("_logprobs", "_reasoning", "_text", "_tool_calls", "finish_reason", "index")

    def __init__(self, index: int, *, logprobs: bool) -> None:
        self.index = index
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._tool_calls = _ToolCallsBuilder()
        self._logprobs: list[dict[str, Any]] | None = [] if logprobs else None
        self.finish_reason: str | None = None

    def add(self, delta: inference.TokenDelta) -> None:
        self._text.append(delta.text)
        if delta.reasoning:
            self._reasoning.append(delta.reasoning)
        if delta.tool_calls:
            self._tool_calls.add(delta.tool_calls)
        if self._logprobs is not None and delta.logprobs:
            self._logprobs.extend(chat_logprobs_content(delta.logprobs))
        if delta.finish_reason:
            self.finish_reason = FINISH_REASONS.get(delta.finish_reason)

    @property
    def text(self) -> str:
        return "".join(self._text)

    def message(self) -> dict[str, Any]:
        tool_calls = self._tool_calls.build()
        text = self.text
        message: dict[str, Any] = {
            "role": "assistant",
            # A message that only calls tools has null content, as OpenAI answers.
            "content": None if tool_calls and not text else text,
            "refusal": None,
        }
        if tool_calls:
            message["tool_calls"] = tool_calls
        if self._reasoning:
            # vLLM's name for a reasoning parser's output (not part of OpenAI's schema).
            message["reasoning"] = "".join(self._reasoning)
        return message

    def build(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "message": self.message(),
            "logprobs": None if self._logprobs is None else {"content": self._logprobs, "refusal": None},
            "finish_reason": self.finish_reason,
        }


# --- responses: the request breakdown ------------------------------------------------------------


def breakdown_dict(
    breakdown: router_pb2.RequestBreakdown, *, metadata: dict[str, Any] | None, logged: dict[str, Any] | None
) -> dict[str, Any]:
    """The hosted routers' `request_breakdown` object (seed 003's fields, plus what the router adds).

    `scores` is a list, one entry per candidate, rather than seed 003's (undocumented) object: with
    redaction every candidate is named "redacted", so model names cannot be keys. `metadata` is the
    caller's own object (protobuf's Struct would turn its integers into floats). `logged` holds
    prompt_messages / completion_message (chat) or prompt / completion (completions) and is None
    when the request set disable_log.
    """
    timestamp = None
    if breakdown.HasField("timestamp"):
        timestamp = breakdown.timestamp.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    result: dict[str, Any] = {
        "prompt_tokens": breakdown.prompt_tokens,
        "completion_tokens": breakdown.completion_tokens,
        "cached_tokens": breakdown.cached_tokens,
        "cost": breakdown.cost,
        "model": breakdown.model,
        "provider": breakdown.provider,
        "category": breakdown.category,
        "difficulty": breakdown.difficulty,
        "router_preference": _PREFERENCE_NAMES.get(breakdown.preference, "balanced"),
        "scores": [
            {
                "model": score.model,
                "provider": score.provider,
                "score": score.score,
                "quality": score.quality,
                "estimated_cost": score.estimated_cost,
                "eligible": score.eligible,
                "excluded_reason": score.excluded_reason or None,
            }
            for score in breakdown.scores
        ],
        "routing_time": breakdown.routing_time,
        "latency": breakdown.latency,
        "time_to_first_token": breakdown.time_to_first_token,
        "attempts": breakdown.attempts,
        "fallbacks_used": list(breakdown.fallbacks_used),
        "cached": breakdown.cached,
        "timestamp": timestamp,
        "status_code": breakdown.status_code,
        "stream": breakdown.stream,
        "metadata": metadata or {},
    }
    if logged is not None:
        result.update(logged)
    return result


def chat_logged_messages(request: ChatCompletionRequest, completion: dict[str, Any]) -> dict[str, Any] | None:
    """The breakdown's prompt_messages / completion_message, or None under disable_log."""
    if request.disable_log:
        return None
    return {
        "prompt_messages": [
            message.model_dump(mode="json", exclude_none=True) for message in request.messages
        ],
        "completion_message": completion,
    }


def completion_logged_text(request: CompletionRequest, completion: str) -> dict[str, Any] | None:
    """The breakdown's prompt / completion for /v1/completions, or None under disable_log."""
    if request.disable_log:
        return None
    return {"prompt": request.prompt, "completion": completion}
