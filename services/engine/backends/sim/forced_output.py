"""When the simulator's output is dictated by the request: a tool call or a JSON document.

- `tool_choice` naming a function: that function is called.
- `"required"`: the first tool whose name appears in the last user message, else the first tool.
- `"auto"` (the default when tools are given): the tool whose name appears in the last user message,
  if any; otherwise the simulator writes text. ("Call get_weather for Oslo" calls get_weather.)
- `"none"`: text.
- Otherwise `response_format` json_object gives `{}` and json_schema a minimal instance of the schema.

Arguments and documents are `json_instance.minimal_instance` of the schema: the same request always
gets the same output, whatever the temperature (as with a real model under a tight grammar). A choice
makes at most one call, whatever parallel_tool_calls says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from services.common.errors import InvalidRequestError
from services.engine.backends.sim.chat_template import message_text
from services.engine.backends.sim.json_instance import minimal_instance
from switchyard.inference.v1 import inference_pb2

_ResponseFormat = inference_pb2.ResponseFormat


@dataclass(frozen=True, slots=True)
class ForcedOutput:
    """The text to write; `tool_name` is set when the text is that tool's arguments."""

    text: str
    tool_name: str | None = None


def forced_output(chat: inference_pb2.Chat) -> ForcedOutput | None:
    tool = _tool_to_call(chat)
    if tool is not None:
        schema = _parse_json(tool.parameters_json, "tools") if tool.HasField("parameters_json") else {}
        if not isinstance(schema, dict):
            raise InvalidRequestError(
                f"The parameters of tool '{tool.name}' are not a JSON Schema.", param="tools"
            )
        # Arguments are always an object, also when the schema leaves the type out.
        arguments = minimal_instance({"type": "object", **schema})
        return ForcedOutput(json.dumps(arguments), tool_name=tool.name)
    response_format = chat.response_format
    if response_format.type == _ResponseFormat.TYPE_JSON_OBJECT:
        return ForcedOutput("{}")
    if response_format.type == _ResponseFormat.TYPE_JSON_SCHEMA:
        if not response_format.HasField("json_schema"):
            raise InvalidRequestError("response_format json_schema needs a schema.", param="response_format")
        return ForcedOutput(
            json.dumps(minimal_instance(_parse_json(response_format.json_schema, "response_format")))
        )
    return None


def _tool_to_call(chat: inference_pb2.Chat) -> inference_pb2.Tool | None:
    choice = chat.tool_choice if chat.HasField("tool_choice") else ("auto" if chat.tools else "none")
    if choice == "none":
        return None
    if not chat.tools:
        raise InvalidRequestError(f"tool_choice '{choice}' needs tools.", param="tool_choice")
    if choice not in ("auto", "required"):
        for tool in chat.tools:
            if tool.name == choice:
                return tool
        raise InvalidRequestError(f"tool_choice names an unknown function '{choice}'.", param="tool_choice")
    asked = _last_user_text(chat)
    named = next((tool for tool in chat.tools if tool.name and tool.name in asked), None)
    if named is None and choice == "required":
        return chat.tools[0]
    return named


def _last_user_text(chat: inference_pb2.Chat) -> str:
    for message in reversed(chat.messages):
        if message.role == "user":
            return message_text(message)
    return ""


def _parse_json(text: str, param: str) -> object:
    try:
        return json.loads(text)
    except ValueError as error:
        raise InvalidRequestError(f"{param} holds a schema that is not JSON: {error}", param=param) from None
