"""What the simulator writes when the request dictates the output, and how it flattens a chat."""

from __future__ import annotations

import json

import jsonschema
import pytest

from services.common.errors import InvalidRequestError
from services.engine.backends.sim.chat_template import render_chat
from services.engine.backends.sim.forced_output import forced_output
from services.engine.backends.sim.json_instance import minimal_instance
from services.engine.backends.sim.vocabulary import tokenize
from switchyard.inference.v1 import inference_pb2

SCHEMAS = [
    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
    {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}},
        "minProperties": 2,
    },
    {"type": "array", "items": {"type": "number", "minimum": 2.5}, "minItems": 3},
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "null"}]},
    {"type": ["null", "integer"], "exclusiveMinimum": 4, "multipleOf": 3},
    {"type": "string", "minLength": 4, "maxLength": 6},
    {"type": "string", "format": "email"},
    {"type": "string", "format": "date-time"},
    {"const": {"fixed": True}},
    {"enum": ["x", "y"]},
    {"anyOf": [{"type": "integer", "minimum": 10}, {"type": "string"}]},
    {"oneOf": [{"type": "object", "properties": {"k": {"type": "string"}}, "required": ["k"]}]},
    {
        "allOf": [
            {"$ref": "#/$defs/base"},
            {"properties": {"extra": {"type": "integer"}}, "required": ["extra"]},
        ],
        "$defs": {"base": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}},
    },
    {
        "type": "object",
        "properties": {"child": {"$ref": "#/$defs/node"}},
        "required": ["child"],
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"name": {"type": "string", "format": "uuid"}},
                "required": ["name"],
            }
        },
    },
    {"properties": {"inferred": {"maximum": -3}}, "required": ["inferred"]},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=[json.dumps(s)[:40] for s in SCHEMAS])
def test_minimal_instance_is_valid_for_its_schema(schema):
    instance = minimal_instance(schema)
    jsonschema.validate(instance, schema, format_checker=jsonschema.FormatChecker())
    assert minimal_instance(schema) == instance, "deterministic"


def test_minimal_instance_keeps_only_required_properties():
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
        "required": ["b"],
    }
    assert minimal_instance(schema) == {"b": ""}


def test_recursive_schemas_end():
    schema = {
        "$ref": "#/$defs/list",
        "$defs": {
            "list": {"type": "object", "properties": {"next": {"$ref": "#/$defs/list"}}, "required": ["next"]}
        },
    }
    depth, node = 0, minimal_instance(schema)
    while isinstance(node, dict):
        node, depth = node["next"], depth + 1
    assert node is None and depth > 1


TOOLS = [
    inference_pb2.Tool(
        name="lookup",
        parameters_json='{"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}',
    ),
    inference_pb2.Tool(name="ping"),
]


def chat(text: str, **kw) -> inference_pb2.Chat:
    return inference_pb2.Chat(messages=[inference_pb2.ChatMessage(role="user", content=text)], **kw)


def test_a_named_tool_is_called_with_minimal_arguments():
    output = forced_output(chat("anything", tools=TOOLS, tool_choice="lookup"))
    assert output is not None and output.tool_name == "lookup"
    assert json.loads(output.text) == {"q": ""}
    ping = forced_output(chat("anything", tools=TOOLS, tool_choice="ping"))
    assert ping is not None and json.loads(ping.text) == {}


def test_tools_are_not_called_without_being_asked_for():
    assert forced_output(chat("hello there", tools=TOOLS)) is None
    assert forced_output(chat("hello")) is None


@pytest.mark.parametrize(
    ("tool_choice", "param"),
    [("missing", "tool_choice"), ("required", "tool_choice")],
)
def test_impossible_tool_choices_are_invalid(tool_choice, param):
    tools = TOOLS if tool_choice == "missing" else []
    with pytest.raises(InvalidRequestError) as caught:
        forced_output(chat("x", tools=tools, tool_choice=tool_choice))
    assert caught.value.metadata["param"] == param


def test_schema_that_is_not_json_is_invalid():
    bad_tool = inference_pb2.Tool(name="broken", parameters_json="{not json")
    with pytest.raises(InvalidRequestError) as caught:
        forced_output(chat("x", tools=[bad_tool], tool_choice="broken"))
    assert caught.value.metadata["param"] == "tools"
    bad_format = inference_pb2.ResponseFormat(
        type=inference_pb2.ResponseFormat.TYPE_JSON_SCHEMA, json_schema="["
    )
    with pytest.raises(InvalidRequestError):
        forced_output(chat("x", response_format=bad_format))


def test_chat_flattens_to_one_line_per_message_ending_with_the_generation_prompt():
    conversation = inference_pb2.Chat(
        messages=[
            inference_pb2.ChatMessage(role="system", content="Be brief."),
            inference_pb2.ChatMessage(
                role="user",
                name="ana",
                parts=[
                    inference_pb2.ContentPart(text="Look:"),
                    inference_pb2.ContentPart(
                        image_url=inference_pb2.ImageUrl(url="https://example.com/a.png")
                    ),
                ],
            ),
            inference_pb2.ChatMessage(
                role="assistant",
                tool_calls=[inference_pb2.ToolCall(id="c1", function_name="ping", function_arguments="{}")],
            ),
            inference_pb2.ChatMessage(role="tool", tool_call_id="c1", content="pong"),
        ],
        tools=[TOOLS[1]],
    )
    assert render_chat(conversation) == (
        "tools: ping({})\n"
        "system: Be brief.\n"
        "user ana: Look:\n<image>\n"
        "assistant: <tool_call> ping({})\n"
        "tool [c1]: pong\n"
        "assistant:"
    )


def test_the_next_turn_starts_with_the_tokens_of_the_previous_one():
    """What makes the prefix cache work for conversations."""
    first_turn = chat("Hi")
    answer = " the river"
    second_turn = inference_pb2.Chat(
        messages=[
            *first_turn.messages,
            inference_pb2.ChatMessage(role="assistant", content=answer),
            inference_pb2.ChatMessage(role="user", content="More"),
        ]
    )
    continued = tokenize(render_chat(first_turn) + answer).token_ids
    assert tokenize(render_chat(second_turn)).token_ids[: len(continued)] == continued


def test_continue_final_message_needs_an_assistant_message_last():
    with pytest.raises(InvalidRequestError):
        render_chat(chat("Hi", chat_template_kwargs_json='{"continue_final_message": true}'))
