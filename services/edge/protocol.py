"""OpenAI wire models of what the edge accepts: the bodies of /v1/completions and /v1/chat/completions.

Only requests are modelled. Responses are plain dicts built in translate.py, because a pydantic
object per streamed chunk would cost more than the chunk itself. Nothing here knows about gRPC.

Conventions:
- Unknown fields are accepted and ignored (`extra="allow"`) so that a newer SDK never breaks a
  request; serving logs their names at DEBUG (`unknown_fields`).
- Types are strict, as OpenAI's are: `"temperature": "0.5"`, `"stream": "yes"`, `"n": 2.0` or
  `"max_tokens": true` are refused ("Invalid type for 'temperature': expected a number, but got a
  string instead."), never converted. JSON integers are numbers, so `"temperature": 1` is fine.
- An explicit JSON `null` means the same as leaving the field out, as in OpenAI's API.
- Unions are told apart by the JSON type of the value (callable discriminators), so a bad value gets
  one error at its exact place (`prompt[3]`, `messages[0].content[1].image_url.url`) instead of one
  error per union member. Union tags are written `<...>`; `error_param` drops them from locations.
- Rules across fields raise `InvalidParameter`, which pydantic lets through unchanged, so that the
  error names the parameter (`best_of`) rather than the whole body.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_N = 128
# OpenAI's bounds for best_of: 0 (the schema's minimum; the same as leaving it out) to 20.
MAX_BEST_OF = 20
MAX_PROMPTS = 128
MAX_STOP_SEQUENCES = 4
MAX_COMPLETION_LOGPROBS = 5
MAX_TOP_LOGPROBS = 20
MAX_TOOLS = 128

_FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"
_TOKEN_ID_KEY = re.compile(r"\d{1,10}")

TokenId = Annotated[int, Field(ge=0, le=2**32 - 1)]


class InvalidParameter(Exception):
    """A request that is well-formed but inconsistent; `param` names the field to blame."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def error_param(loc: Sequence[str | int]) -> str | None:
    """A pydantic error location as OpenAI's `param`: ("messages", 0, "content") -> "messages[0].content"."""
    param = ""
    for part in loc:
        if isinstance(part, int):
            param += f"[{part}]"
        elif not part.startswith("<"):
            param += f".{part}" if param else part
    return param or None


def unknown_fields(request: BaseModel) -> list[str]:
    """The top-level fields the request carried that this API does not know (they are ignored)."""
    return sorted(request.model_extra or ())


def _json_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "<string>"
    if isinstance(value, list):
        return "<array>"
    if isinstance(value, dict | BaseModel):
        return "<object>"
    return None


def _type_tag(value: Any) -> str | None:
    """The `type` member of an object, as a union tag."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"<{kind}>" if isinstance(kind, str) else None


class WireModel(BaseModel):
    # strict: see the module docstring (pydantic's strict JSON mode still takes integers for floats).
    model_config = ConfigDict(extra="allow", populate_by_name=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _null_means_absent(cls, data: Any) -> Any:
        if isinstance(data, dict) and None in data.values():
            return {key: value for key, value in data.items() if value is not None}
        return data


# --- prompts and stop sequences ------------------------------------------------------------------


def _prompt_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "<text>"
    if isinstance(value, list) and value:
        first = value[0]
        if isinstance(first, str):
            return "<texts>"
        if isinstance(first, int) and not isinstance(first, bool):
            return "<tokens>"
        if isinstance(first, list):
            return "<token_lists>"
    return None


Prompt = Annotated[
    Annotated[str, Tag("<text>")]
    | Annotated[list[str], Field(max_length=MAX_PROMPTS), Tag("<texts>")]
    | Annotated[list[TokenId], Tag("<tokens>")]
    | Annotated[
        list[Annotated[list[TokenId], Field(min_length=1)]],
        Field(max_length=MAX_PROMPTS),
        Tag("<token_lists>"),
    ],
    Discriminator(
        _prompt_kind,
        custom_error_type="invalid_prompt",
        custom_error_message=(
            "prompt must be a string, a non-empty array of strings, of token ids, or of token-id arrays"
        ),
    ),
]

Stop = Annotated[
    Annotated[str, Tag("<string>")]
    | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES), Tag("<array>")],
    Discriminator(
        _json_kind,
        custom_error_type="invalid_stop",
        custom_error_message=f"stop must be a string or an array of up to {MAX_STOP_SEQUENCES} strings",
    ),
]


class StreamOptions(WireModel):
    include_usage: bool = False


# --- what both endpoints share -------------------------------------------------------------------


class GenerationRequest(WireModel):
    """Fields common to both endpoints: the model, sampling, streaming and the routing extras."""

    # Empty or "auto": the router chooses (the seeds' routers need no model).
    model: str | None = None

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    # 0 or -1: all tokens (vLLM's "disabled").
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: Stop | None = None
    stop_token_ids: list[TokenId] | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    # Token id (as a string, the JSON object key) -> bias added to its logit.
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool | None = None
    user: str | None = None

    stream: bool = False
    stream_options: StreamOptions | None = None

    # The hosted routers' extras (seeds 000 and 003).
    router_preference: Literal["balanced", "powerful", "efficient"] | None = None
    models: list[str] | None = None
    fallback_models: list[str] | None = None
    exclude_models: list[str] | None = None
    exclude_providers: list[str] | None = None
    customer_identifier: str | None = None
    metadata: dict[str, Any] | None = None
    request_breakdown: bool = False
    disable_log: bool = False
    # false: neither answered from the router's response cache nor stored there (as the header
    # x-switchyard-cache: off).
    cache: bool = True

    # Seconds this request may take; capped by the edge's request_timeout_seconds.
    timeout: float | None = Field(default=None, gt=0)

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias_keys_are_token_ids(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key in bias or ():
            if not _TOKEN_ID_KEY.fullmatch(key) or int(key) > 2**32 - 1:
                raise PydanticCustomError(
                    "invalid_logit_bias", "logit_bias keys must be token ids, not '{key}'", {"key": key}
                )
        return bias

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def explicit_model(self) -> str:
        """The model asked for, or "" when the router should choose."""
        return "" if self.model in (None, "", "auto") else self.model

    def _check_shared_rules(self, max_tokens: int | None) -> None:
        if self.stream_options is not None and not self.stream:
            raise InvalidParameter("stream_options is only allowed when stream is true.", "stream_options")
        if max_tokens is not None and self.min_tokens > max_tokens:
            raise InvalidParameter(
                f"min_tokens ({self.min_tokens}) exceeds max_tokens ({max_tokens}).", "min_tokens"
            )


# --- /v1/completions -----------------------------------------------------------------------------


class CompletionRequest(GenerationRequest):
    prompt: Prompt
    # The seeds and OpenAI: 16 when not given. 0 is allowed (echo alone scores a prompt).
    max_tokens: int = Field(default=16, ge=0)
    # 0 means the same as leaving it out (see MAX_BEST_OF); `candidates` is what reaches the engine.
    best_of: int | None = Field(default=None, ge=0, le=MAX_BEST_OF)
    # The chosen token's logprob plus this many alternatives per position.
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool = False

    @model_validator(mode="after")
    def _check_rules(self) -> CompletionRequest:
        self._check_shared_rules(self.max_tokens)
        if (self.model_extra or {}).get("suffix"):
            # OpenAI refuses suffix for models without insertion; ignoring it would return text that
            # silently lacks what the caller asked for.
            raise InvalidParameter("suffix is not supported by the models served here.", "suffix")
        if self.best_of:
            if self.best_of < self.n:
                raise InvalidParameter(f"best_of ({self.best_of}) must be at least n ({self.n}).", "best_of")
            if self.stream:
                raise InvalidParameter("best_of cannot be used with stream.", "best_of")
        return self

    @property
    def candidates(self) -> int | None:
        """best_of as the engine takes it: None when not asked for (given as 0 or left out)."""
        return self.best_of or None

    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request on its own (a string or a token-id list)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and isinstance(prompt[0], int):
            return [prompt]  # type: ignore[list-item]
        return list(prompt)  # type: ignore[arg-type]


# --- /v1/chat/completions ------------------------------------------------------------------------


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class RefusalPart(WireModel):
    """An assistant's earlier refusal, replayed in the conversation. It reaches the model as the
    assistant's text (what vLLM does): chat templates know no refusal, and dropping it would
    change what the model was told it said."""

    type: Literal["refusal"]
    refusal: str


class ImageUrl(WireModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(WireModel):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[
    Annotated[TextPart, Tag("<text>")]
    | Annotated[ImagePart, Tag("<image_url>")]
    | Annotated[RefusalPart, Tag("<refusal>")],
    Discriminator(
        _type_tag,
        custom_error_type="unsupported_content_part",
        custom_error_message="content parts must have type 'text', 'image_url' or 'refusal'",
    ),
]

Content = Annotated[
    Annotated[str, Tag("<string>")] | Annotated[list[ContentPart], Field(min_length=1), Tag("<array>")],
    Discriminator(
        _json_kind,
        custom_error_type="invalid_content",
        custom_error_message="content must be a string, a non-empty array of content parts, or null",
    ),
]


class FunctionCall(WireModel):
    name: str
    # JSON text, as the model produced it.
    arguments: str


class AssistantToolCall(WireModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content | None = Field(default=None, validate_default=True)
    name: str | None = None
    tool_calls: list[AssistantToolCall] | None = Field(default=None, validate_default=True)
    tool_call_id: str | None = Field(default=None, validate_default=True)

    @field_validator("role", mode="before")
    @classmethod
    def _no_legacy_function_role(cls, role: Any) -> Any:
        # Not mapped to a tool message: a 'function' message names the function, not the call it
        # answers, so with two calls of one function the tool_call_id would be a guess.
        if role == "function":
            raise PydanticCustomError(
                "unsupported_role",
                "messages with role 'function' are deprecated and not supported; send each result as a "
                "'tool' message with the tool_call_id it answers",
            )
        return role

    @field_validator("content")
    @classmethod
    def _content_fits_role(cls, content: str | list | None, info: ValidationInfo) -> str | list | None:
        role = info.data.get("role")
        if content is None and role in ("system", "developer", "user", "tool"):
            raise PydanticCustomError("missing_content", "{role} messages need content", {"role": role})
        if isinstance(content, list):
            if role != "user" and any(isinstance(part, ImagePart) for part in content):
                raise PydanticCustomError("invalid_content", "only user messages may contain images")
            if role != "assistant" and any(isinstance(part, RefusalPart) for part in content):
                raise PydanticCustomError("invalid_content", "only assistant messages may contain refusals")
        return content

    @field_validator("tool_calls")
    @classmethod
    def _tool_calls_are_the_assistants(cls, calls: list | None, info: ValidationInfo) -> list | None:
        if calls and info.data.get("role") != "assistant":
            raise PydanticCustomError("invalid_tool_calls", "only assistant messages carry tool_calls")
        return calls

    @field_validator("tool_call_id")
    @classmethod
    def _tool_messages_name_their_call(cls, call_id: str | None, info: ValidationInfo) -> str | None:
        if call_id is None and info.data.get("role") == "tool":
            raise PydanticCustomError(
                "missing_tool_call_id", "tool messages need the tool_call_id they answer"
            )
        return call_id


class FunctionDefinition(WireModel):
    name: str = Field(pattern=_FUNCTION_NAME)
    description: str | None = None
    # The JSON Schema of the arguments.
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(WireModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(WireModel):
    name: str


class NamedToolChoice(WireModel):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("<string>")]
    | Annotated[NamedToolChoice, Tag("<object>")],
    Discriminator(
        _json_kind,
        custom_error_type="invalid_tool_choice",
        custom_error_message="tool_choice must be 'none', 'auto', 'required' or a named function",
    ),
]


# The deprecated `function_call` request field: what `tool_choice` says today, in its older form.
FunctionCallChoice = Annotated[
    Annotated[Literal["none", "auto"], Tag("<string>")] | Annotated[FunctionName, Tag("<object>")],
    Discriminator(
        _json_kind,
        custom_error_type="invalid_function_call",
        custom_error_message="function_call must be 'none', 'auto' or {\"name\": ...}",
    ),
]


class TextFormat(WireModel):
    type: Literal["text"]


class JsonObjectFormat(WireModel):
    type: Literal["json_object"]


class JsonSchemaSpec(WireModel):
    name: str = Field(pattern=_FUNCTION_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(WireModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    Annotated[TextFormat, Tag("<text>")]
    | Annotated[JsonObjectFormat, Tag("<json_object>")]
    | Annotated[JsonSchemaFormat, Tag("<json_schema>")],
    Discriminator(
        _type_tag,
        custom_error_type="invalid_response_format",
        custom_error_message="response_format type must be 'text', 'json_object' or 'json_schema'",
    ),
]


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    # Unset: until the context window ends. max_completion_tokens wins over the older max_tokens.
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[ChatTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    # Deprecated by OpenAI but still in its spec and served: they become tools / tool_choice (see
    # _adopt_legacy_functions). vLLM ignores them. Answers always use `tool_calls`; the legacy
    # `message.function_call` response field is not produced.
    functions: list[FunctionDefinition] | None = Field(default=None, max_length=MAX_TOOLS)
    function_call: FunctionCallChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # Extra keyword arguments for the model's chat template (e.g. enable_thinking).
    chat_template_kwargs: dict[str, Any] | None = None

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @model_validator(mode="after")
    def _check_rules(self) -> ChatCompletionRequest:
        self._check_shared_rules(self.output_limit)
        extra = self.model_extra or {}
        if "audio" in (extra.get("modalities") or ()) or extra.get("audio"):
            raise InvalidParameter("Audio output is not supported by the models served here.", "modalities")
        self._check_conversation()
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidParameter("top_logprobs requires logprobs to be true.", "top_logprobs")
        choice_param = self._adopt_legacy_functions()
        choice = self.tool_choice
        if choice is not None and choice != "none" and not self.tools:
            raise InvalidParameter(f"{choice_param} is only allowed when tools are given.", choice_param)
        if isinstance(choice, NamedToolChoice) and choice.function.name not in {
            tool.function.name for tool in self.tools or ()
        }:
            raise InvalidParameter(
                f"{choice_param} names the function '{choice.function.name}', which is not among the tools.",
                choice_param,
            )
        return self

    def _adopt_legacy_functions(self) -> str:
        """Moves `functions` / `function_call` into `tools` / `tool_choice`, refusing a request that
        gives both forms. Returns the name the caller used for the tool choice, for error params."""
        if self.functions is not None:
            if self.tools is not None:
                raise InvalidParameter("functions cannot be combined with tools; use tools.", "functions")
            self.tools = [ChatTool(type="function", function=function) for function in self.functions]
            self.functions = None
        if self.function_call is None:
            return "tool_choice"
        if self.tool_choice is not None:
            raise InvalidParameter(
                "function_call cannot be combined with tool_choice; use tool_choice only.", "function_call"
            )
        call = self.function_call
        self.tool_choice = call if isinstance(call, str) else NamedToolChoice(type="function", function=call)
        self.function_call = None
        return "function_call"

    def _check_conversation(self) -> None:
        """The rules that span messages, in one pass over them (OpenAI's wording where it has one)."""
        call_ids: set[str] = set()
        for index, message in enumerate(self.messages):
            if message.role == "assistant":
                if message.tool_calls:
                    call_ids.update(call.id for call in message.tool_calls)
                elif message.content is None:
                    param = f"messages[{index}].content"
                    raise InvalidParameter(
                        f"Invalid value for '{param}': assistant messages need content or tool_calls.", param
                    )
            elif message.role == "tool" and message.tool_call_id not in call_ids:
                param = f"messages[{index}].tool_call_id"
                if not call_ids:
                    # OpenAI's message word for word, its spelling included: clients match on it.
                    raise InvalidParameter(
                        "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                        "message with 'tool_calls'.",
                        param,
                    )
                raise InvalidParameter(
                    f"Invalid parameter: 'tool_call_id' of '{message.tool_call_id}' not found in "
                    "'tool_calls' of previous message.",
                    param,
                )
