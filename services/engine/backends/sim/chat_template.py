"""The simulator's chat template: a conversation flattened to plain text, one line per message.

    tools: get_weather({"type": "object", ...})
    system: You are terse.
    user: Weather in Oslo?
    assistant: <tool_call> get_weather({"city": "Oslo"})
    tool [call_1]: {"temp": 3}
    assistant:

An assistant message renders exactly like the generation prompt followed by the text the simulator
wrote, so the next turn of a conversation starts with the tokens of the previous one (what a prefix
cache needs). Tool definitions are part of the prompt, as in real templates, so they count as tokens.
"""

from __future__ import annotations

import json

from services.common.errors import InvalidRequestError
from switchyard.inference.v1 import inference_pb2

IMAGE_PLACEHOLDER = "<image>"


def render_chat(chat: inference_pb2.Chat) -> str:
    """The prompt text for a chat. Template kwargs (vLLM's names): `add_generation_prompt` (default
    true) and `continue_final_message` (default false: when true the last message, which must be the
    assistant's, is left open for the simulator to continue)."""
    options = _template_options(chat)
    continue_final = bool(options.get("continue_final_message", False))
    add_generation_prompt = bool(options.get("add_generation_prompt", not continue_final))
    if continue_final and add_generation_prompt:
        raise InvalidRequestError(
            "continue_final_message and add_generation_prompt cannot both be true.",
            param="chat_template_kwargs",
        )
    if continue_final and (not chat.messages or chat.messages[-1].role != "assistant"):
        raise InvalidRequestError(
            "continue_final_message needs an assistant message last.", param="chat_template_kwargs"
        )
    lines = []
    if chat.tools:
        lines.append("tools: " + "; ".join(f"{t.name}({t.parameters_json or '{}'})" for t in chat.tools))
    lines.extend(_render_message(message) for message in chat.messages)
    if add_generation_prompt:
        lines.append("assistant:")
    return "\n".join(lines)


def _render_message(message: inference_pb2.ChatMessage) -> str:
    header = message.role
    if message.HasField("name"):
        header += f" {message.name}"
    if message.HasField("tool_call_id"):
        header += f" [{message.tool_call_id}]"
    body = [message_text(message)] if message.parts or message.HasField("content") else []
    body += [f"<tool_call> {call.function_name}({call.function_arguments})" for call in message.tool_calls]
    return f"{header}: " + "\n".join(body) if body else f"{header}:"


def message_text(message: inference_pb2.ChatMessage) -> str:
    """A message's text: its content, or its text parts joined (an image stands as a placeholder)."""
    if not message.parts:
        return message.content
    return "\n".join(
        part.text if part.WhichOneof("part") == "text" else IMAGE_PLACEHOLDER for part in message.parts
    )


def _template_options(chat: inference_pb2.Chat) -> dict:
    if not chat.HasField("chat_template_kwargs_json"):
        return {}
    try:
        options = json.loads(chat.chat_template_kwargs_json)
    except ValueError as error:
        raise InvalidRequestError(
            f"chat_template_kwargs is not JSON: {error}", param="chat_template_kwargs"
        ) from None
    if not isinstance(options, dict):
        raise InvalidRequestError("chat_template_kwargs must be a JSON object.", param="chat_template_kwargs")
    return options
