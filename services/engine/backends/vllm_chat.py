"""Chat input for the vLLM backend: the contract's `Chat` rendered through vLLM's own renderer.

vLLM's renderer and parsers speak its OpenAI request model (`ChatCompletionRequest`), so a chat is
translated into one once per request; from there on vLLM does what its own server does: the model's
chat template (tools handed to it), tool_choice validation, and the tool parser's `adjust_request`,
which turns named / "required" tool_choice and `response_format` into structured outputs.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.exceptions import VLLMValidationError
from vllm.inputs import EngineInput
from vllm.parser import Parser
from vllm.renderers.chat_utils import load_chat_template
from vllm.renderers.online_renderer import OnlineRenderer
from vllm.v1.engine.async_llm import AsyncLLM

from services.common.errors import InvalidRequestError
from services.engine.backends.vllm_config import VllmSettings
from switchyard.inference.v1 import inference_pb2

_RESPONSE_FORMATS = {
    inference_pb2.ResponseFormat.TYPE_TEXT: "text",
    inference_pb2.ResponseFormat.TYPE_JSON_OBJECT: "json_object",
    inference_pb2.ResponseFormat.TYPE_JSON_SCHEMA: "json_schema",
}


class ChatRenderer:
    """Renders chats with the served model's template and makes their output parsers."""

    def __init__(self, llm: AsyncLLM, settings: VllmSettings) -> None:
        self._online = OnlineRenderer(
            model_config=llm.model_config,
            renderer=llm.renderer,
            request_logger=None,
            chat_template=load_chat_template(settings.chat_template),
            chat_template_content_format="auto",
            # A configured tool parser is what makes tool_choice "auto" possible (vLLM's
            # --enable-auto-tool-choice --tool-call-parser NAME).
            enable_auto_tools=settings.tool_call_parser is not None,
            tool_parser=settings.tool_call_parser,
            reasoning_parser=settings.reasoning_parser,
        )
        # Compiles the chat template now rather than during the first chat's time to first token.
        self._online.warmup()
        self._model_config = llm.model_config
        self._tokenizer = llm.renderer.get_tokenizer()

    @property
    def parses_tool_calls(self) -> bool:
        parser = self._online.parser
        return parser is not None and parser.tool_parser_cls is not None

    async def render(self, request: ChatCompletionRequest) -> EngineInput:
        """The prompt for `request`. Also adjusts `request` in place for tool calling (structured
        outputs, skip_special_tokens), as vLLM's server does before it samples."""
        result = await self._online.render_chat(request)
        if isinstance(result, ErrorResponse):
            raise InvalidRequestError(result.error.message, param=result.error.param)
        _, (engine_input,) = result
        return engine_input

    def needs_parser(self, request: ChatCompletionRequest) -> bool:
        """Whether `request`'s output is more than plain content: tool calls or reasoning."""
        parser_cls = self._online.parser
        if parser_cls is None:
            return False
        wants_tools = bool(request.tools) and request.tool_choice != "none"
        return wants_tools or parser_cls.reasoning_parser_cls is not None

    def generate_kwargs(self, request: ChatCompletionRequest, prompt_token_ids: list[int]) -> dict[str, Any]:
        """What vLLM's server tells AsyncLLM.generate about reasoning: whether the prompt already
        ended it, so that a structured output's grammar starts at the right token."""
        parser_cls = self._online.parser
        reasoning = parser_cls is not None and parser_cls.reasoning_parser_cls is not None
        parser = self.new_parser(request) if reasoning else None
        kwargs: dict[str, Any] = {
            "reasoning_ended": request.resolve_reasoning_ended(parser, prompt_token_ids)
        }
        if reasoning:
            template_kwargs = self._online.effective_chat_template_kwargs(request)
            kwargs["reasoning_parser_kwargs"] = {"chat_template_kwargs": template_kwargs}
        return kwargs

    def new_parser(self, request: ChatCompletionRequest) -> Parser:
        """A fresh output parser for one choice (see needs_parser)."""
        parser_cls = self._online.parser
        assert parser_cls is not None
        return parser_cls(
            self._tokenizer,
            request.tools,
            chat_template_kwargs=self._online.effective_chat_template_kwargs(request),
            model_config=self._model_config,
        )


def chat_completion_request(
    chat: inference_pb2.Chat, sampling: inference_pb2.SamplingParams
) -> ChatCompletionRequest:
    """vLLM's request model for `chat`, validated by vLLM (tool_choice against tools, formats).

    Only what rendering and output parsing read is set; sampling is built from the contract
    directly (vllm_sampling), except for what the tool parser adjusts on this request.
    """
    body: dict[str, Any] = {
        "messages": [_message(m) for m in chat.messages],
        # What the parser may turn off for tool markup the tokenizer marks as special.
        "skip_special_tokens": not sampling.HasField("skip_special_tokens") or sampling.skip_special_tokens,
    }
    if sampling.HasField("max_tokens"):
        body["max_completion_tokens"] = sampling.max_tokens
    if chat.tools:
        body["tools"] = [_tool(t) for t in chat.tools]
    if chat.HasField("tool_choice"):
        body["tool_choice"] = _tool_choice(chat.tool_choice)
    # Unset means one call at most: the product's API documents parallel_tool_calls as default false.
    body["parallel_tool_calls"] = chat.HasField("parallel_tool_calls") and chat.parallel_tool_calls
    if chat.response_format.type:
        body["response_format"] = _response_format(chat.response_format)
    if chat.HasField("chat_template_kwargs_json"):
        body["chat_template_kwargs"] = _json(chat.chat_template_kwargs_json, "chat_template_kwargs")
    try:
        return ChatCompletionRequest.model_validate(body)
    except VLLMValidationError as error:
        raise InvalidRequestError(str(error.args[0]), param=error.parameter) from error
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidRequestError(first["msg"], param=param) from error


def _message(message: inference_pb2.ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role}
    if message.parts:
        out["content"] = [_part(p) for p in message.parts]
    elif message.HasField("content"):
        out["content"] = message.content
    else:
        out["content"] = None
    if message.HasField("name"):
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function_name, "arguments": c.function_arguments},
            }
            for c in message.tool_calls
        ]
    if message.HasField("tool_call_id"):
        out["tool_call_id"] = message.tool_call_id
    return out


def _part(part: inference_pb2.ContentPart) -> dict[str, Any]:
    if part.WhichOneof("part") == "image_url":
        image: dict[str, Any] = {"url": part.image_url.url}
        if part.image_url.HasField("detail"):
            image["detail"] = part.image_url.detail
        return {"type": "image_url", "image_url": image}
    return {"type": "text", "text": part.text}


def _tool(tool: inference_pb2.Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.HasField("description"):
        function["description"] = tool.description
    if tool.HasField("parameters_json"):
        function["parameters"] = _json(tool.parameters_json, "tools.function.parameters")
    if tool.HasField("strict"):
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _tool_choice(choice: str) -> str | dict[str, Any]:
    if choice in ("none", "auto", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def _response_format(response_format: inference_pb2.ResponseFormat) -> dict[str, Any]:
    kind = _RESPONSE_FORMATS[response_format.type]
    if kind != "json_schema":
        return {"type": kind}
    if not response_format.HasField("json_schema"):
        raise InvalidRequestError("response_format json_schema needs a schema", param="response_format")
    schema: dict[str, Any] = {
        "name": response_format.schema_name or "response",
        "schema": _json(response_format.json_schema, "response_format.json_schema.schema"),
    }
    if response_format.HasField("strict"):
        schema["strict"] = response_format.strict
    return {"type": "json_schema", "json_schema": schema}


def _json(text: str, param: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise InvalidRequestError(f"{param} is not valid JSON: {error}", param=param) from error
