"""Chat on real vLLM: the model's own template, structured outputs and tool calls parsed by vLLM's
hermes parser, through a real EngineServer over gRPC."""

from __future__ import annotations

import json

import grpc
import jsonschema
import pytest

from switchyard.inference.v1 import inference_pb2
from tests.engine.engine_client import EngineClient, Generation, request

pytestmark = pytest.mark.vllm

STOP = inference_pb2.FINISH_REASON_STOP
TOOL_CALLS = inference_pb2.FINISH_REASON_TOOL_CALLS

WEATHER_ARGS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome"]},
        "days": {"type": "integer", "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [
    # strict: the arguments are constrained to the schema (random weights would write anything).
    inference_pb2.Tool(name="get_weather", parameters_json=json.dumps(WEATHER_ARGS), strict=True),
    inference_pb2.Tool(
        name="get_time", parameters_json=json.dumps({"type": "object", "properties": {}}), strict=True
    ),
]


def chat(*messages: tuple[str, str], **options) -> inference_pb2.Chat:
    return inference_pb2.Chat(
        messages=[inference_pb2.ChatMessage(role=role, content=content) for role, content in messages],
        **options,
    )


def calls(result: Generation, index: int = 0) -> list[dict]:
    """The tool calls of one choice, put together from their streamed pieces."""
    merged: dict[int, dict] = {}
    for piece in result.choices[index].tool_calls:
        call = merged.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
        call["id"] += piece.id
        call["name"] += piece.function_name
        call["arguments"] += piece.function_arguments
    return [merged[i] for i in sorted(merged)]


async def test_chat_is_rendered_with_the_model_template(engine: EngineClient, backend):
    messages = [
        ("developer", "Answer in one word."),
        ("user", "Which module sorts lists?"),
        ("assistant", "heapq"),
        ("user", "And which one parses JSON?"),
    ]
    result = await engine.generate(request(chat=chat(*messages), max_tokens=4, ignore_eos=True))
    tokenizer = backend.llm.renderer.get_tokenizer()
    rendered = tokenizer.apply_chat_template(
        [{"role": role, "content": content} for role, content in messages],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert rendered.endswith("<|im_start|>assistant\n")
    # The template's own rendering, including the assistant prompt it ends with.
    assert result.usage.prompt_tokens == len(tokenizer.encode(rendered, add_special_tokens=False))
    assert result.usage.completion_tokens == 4


async def test_text_parts_are_joined_into_the_prompt(engine: EngineClient):
    parts = [inference_pb2.ContentPart(text="one"), inference_pb2.ContentPart(text="two")]
    as_parts = inference_pb2.Chat(messages=[inference_pb2.ChatMessage(role="user", parts=parts)])
    result = await engine.generate(request(chat=as_parts, max_tokens=1))
    # The template takes a string; vLLM joins text parts with a newline.
    as_string = await engine.generate(request(chat=chat(("user", "one\ntwo")), max_tokens=1))
    assert result.usage.prompt_tokens == as_string.usage.prompt_tokens


async def test_json_schema_output_validates_against_the_schema(engine: EngineClient):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "count": {"type": "integer", "maximum": 99},
        },
        "required": ["name", "count"],
        "additionalProperties": False,
    }
    response_format = inference_pb2.ResponseFormat(
        type=inference_pb2.ResponseFormat.TYPE_JSON_SCHEMA, json_schema=json.dumps(schema), schema_name="item"
    )
    for seed in (1, 2, 3):
        conversation = chat(("user", "An item, please."), response_format=response_format)
        result = await engine.generate(request(chat=conversation, seed=seed, max_tokens=100))
        jsonschema.validate(json.loads(result.text), schema)
        assert result.choices[0].finish_reason == STOP


async def test_json_object_output_starts_an_object(engine: EngineClient):
    """Any object is allowed, so a random model's keys may run past max_tokens: the grammar shows in
    how the output starts (unconstrained, this model almost never writes '{' first)."""
    response_format = inference_pb2.ResponseFormat(type=inference_pb2.ResponseFormat.TYPE_JSON_OBJECT)
    conversation = chat(("user", "JSON please."), response_format=response_format)
    for seed in (1, 2, 3):
        result = await engine.generate(request(chat=conversation, seed=seed, max_tokens=3))
        assert result.text.startswith("{")


async def test_forced_tool_call_is_parsed_into_a_tool_call(engine: EngineClient):
    conversation = chat(("user", "Weather in Paris for 3 days?"), tools=TOOLS, tool_choice="get_weather")
    result = await engine.generate(request(chat=conversation, temperature=0, max_tokens=64))
    (call,) = calls(result)
    assert call["name"] == "get_weather"
    assert call["id"]
    jsonschema.validate(json.loads(call["arguments"]), WEATHER_ARGS)
    assert result.text == "", "the call's markup is not content"
    # OpenAI finishes a forced call with "stop".
    assert result.choices[0].finish_reason == STOP


async def test_required_tool_choice_calls_a_tool(engine: EngineClient):
    conversation = chat(
        ("user", "Use a tool."), tools=TOOLS, tool_choice="required", parallel_tool_calls=False
    )
    result = await engine.generate(request(chat=conversation, seed=5, max_tokens=64))
    (call,) = calls(result)
    assert call["name"] in {"get_weather", "get_time"}
    json.loads(call["arguments"])
    assert result.choices[0].finish_reason == TOOL_CALLS


async def test_parallel_tool_calls_only_when_asked(engine: EngineClient):
    """Left unset, parallel_tool_calls is false (as the API documents it): one call, then the end."""

    async def calls_per_seed(**options) -> list[int]:
        conversation = chat(("user", "Use tools."), tools=TOOLS[1:], tool_choice="required", **options)
        results = [
            await engine.generate(request(chat=conversation, seed=seed, max_tokens=80)) for seed in (1, 2, 3)
        ]
        return [len(calls(result)) for result in results]

    assert await calls_per_seed() == [1, 1, 1]
    assert max(await calls_per_seed(parallel_tool_calls=True)) > 1


async def test_tool_call_arguments_stream_in_pieces(engine: EngineClient):
    conversation = chat(("user", "Weather?"), tools=TOOLS, tool_choice="get_weather")
    result = await engine.generate(request(chat=conversation, temperature=0, max_tokens=64))
    pieces = result.choices[0].tool_calls
    assert len(pieces) > 1
    assert pieces[0].id and pieces[0].function_name == "get_weather"
    assert all(not piece.function_name for piece in pieces[1:]), "the name comes once, first"


async def test_each_choice_gets_its_own_tool_call(engine: EngineClient):
    conversation = chat(("user", "Weather?"), tools=TOOLS, tool_choice="get_weather")
    result = await engine.generate(request(chat=conversation, n=2, seed=6, max_tokens=64))
    ids = set()
    for index in (0, 1):
        (call,) = calls(result, index)
        jsonschema.validate(json.loads(call["arguments"]), WEATHER_ARGS)
        ids.add(call["id"])
    assert len(ids) == 2


async def test_earlier_tool_calls_and_results_are_part_of_the_prompt(engine: EngineClient):
    question = chat(("user", "Weather in Rome?"))
    with_history = inference_pb2.Chat()
    with_history.CopyFrom(question)
    with_history.messages.add(
        role="assistant",
        tool_calls=[
            inference_pb2.ToolCall(
                id="c1", function_name="get_weather", function_arguments='{"city": "Rome"}'
            )
        ],
    )
    with_history.messages.add(role="tool", tool_call_id="c1", content='{"celsius": 21}')
    with_history.tools.extend(TOOLS)
    short = await engine.generate(request(chat=question, max_tokens=1))
    longer = await engine.generate(request(chat=with_history, max_tokens=1))
    assert longer.usage.prompt_tokens > short.usage.prompt_tokens + 20


async def test_tool_choice_naming_an_unknown_tool_is_invalid(engine: EngineClient):
    conversation = chat(("user", "Hi"), tools=TOOLS, tool_choice="no_such_tool")
    error = await engine.error(request(chat=conversation))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_REQUEST"


async def test_echo_is_refused_for_chat(engine: EngineClient):
    error = await engine.error(request(chat=chat(("user", "Hi")), echo=True))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.metadata.get("param") == "echo"
