"""POST /v1/chat/completions over real HTTP, with the official openai SDK as the client where it can be."""

from __future__ import annotations

import json

from switchyard.inference.v1 import inference_pb2 as inference
from switchyard.router.v1 import router_service_pb2 as router_pb2
from tests.edge.conftest import Edge, delta, finished, routed
from tests.openai_schema import assert_matches

CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three rivers."}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def choices_by_index(events: list[dict]) -> dict[int, list[dict]]:
    by_index: dict[int, list[dict]] = {}
    for event in events:
        for choice in event["choices"]:
            by_index.setdefault(choice["index"], []).append(choice)
    return by_index


async def test_chat_completion_answers_as_openai_does(edge: Edge):
    completion = await edge.openai().chat.completions.create(
        model="auto",
        messages=CHAT,
        max_completion_tokens=3,
        temperature=0,
        seed=5,
        extra_body={"router_preference": "powerful"},
    )
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "redacted"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "w0 w1 w2"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 3

    request = edge.router.calls[-1].request
    assert [m.role for m in request.input.chat.messages] == ["system", "user"]
    assert request.input.sampling.temperature == 0 and request.input.sampling.seed == 5
    assert request.routing.preference == router_pb2.ROUTER_PREFERENCE_POWERFUL

    raw = await edge.post(
        "/v1/chat/completions", {"messages": CHAT, "n": 2, "logprobs": True, "top_logprobs": 2}
    )
    body = raw.json()
    assert_matches("CreateChatCompletionResponse", body)
    assert [c["message"]["content"] for c in body["choices"]] == [
        "p0w0 p0w1 p0w2 p0w3",
        "p1w0 p1w1 p1w2 p1w3",
    ]
    assert [t["token"] for t in body["choices"][1]["logprobs"]["content"]] == [
        "p1w0",
        " p1w1",
        " p1w2",
        " p1w3",
    ]


async def test_the_model_named_by_the_router_is_what_the_response_says(edge: Edge):
    async def revealing(request, context):
        yield routed(model="acme/big:2")
        yield delta(0, "hi", inference.FINISH_REASON_STOP)
        yield finished(completion=1)

    edge.router.script = revealing
    completion = await edge.openai().chat.completions.create(model="acme/big:2", messages=CHAT)
    assert completion.model == "acme/big:2"


async def test_stream_opens_each_choice_with_the_role_and_finishes_it_once(edge: Edge):
    body = {
        "messages": CHAT,
        "n": 3,
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = await edge.stream_events("/v1/chat/completions", body)
    for event in events:
        assert_matches("CreateChatCompletionStreamResponse", event)
    assert len({(e["id"], e["created"], e["object"]) for e in events}) == 1
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 12
    assert all(e["usage"] is None for e in events[:-1])
    by_index = choices_by_index(events)
    assert sorted(by_index) == [0, 1, 2]
    for index, choices in by_index.items():
        assert choices[0]["delta"] == {"role": "assistant", "content": ""}
        assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["length"]
        assert (
            "".join(c["delta"].get("content", "") for c in choices)
            == f"p{index}w0 p{index}w1 p{index}w2 p{index}w3"
        )

    # The SDK reassembles the same stream; without include_usage no chunk has a usage key.
    stream = await edge.openai().chat.completions.create(
        model="auto", messages=CHAT, max_tokens=3, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "w0 w1 w2"
    raw = await edge.stream_events("/v1/chat/completions", {"messages": CHAT, "stream": True})
    assert all("usage" not in e for e in raw)


async def test_streamed_logprobs_ride_with_their_tokens(edge: Edge):
    events = await edge.stream_events(
        "/v1/chat/completions",
        {"messages": CHAT, "max_tokens": 2, "stream": True, "logprobs": True, "top_logprobs": 3},
    )
    tokens = [
        entry["token"]
        for e in events
        for c in e["choices"]
        if c["logprobs"]
        for entry in c["logprobs"]["content"]
    ]
    assert tokens == ["w0", " w1"]
    for event in events:
        assert_matches("CreateChatCompletionStreamResponse", event)


async def tool_calling(request, context):
    yield routed()
    pieces = [
        inference.ToolCallDelta(
            index=0, id="call_1", function_name="get_weather", function_arguments='{"city": '
        ),
        inference.ToolCallDelta(index=0, function_arguments='"Oslo"}'),
    ]
    yield delta(0, tool_calls=pieces[:1])
    yield delta(0, tool_calls=pieces[1:], finish=inference.FINISH_REASON_TOOL_CALLS)
    yield finished(completion=6)


async def test_tool_calls_come_back_whole_or_streamed(edge: Edge):
    edge.router.script = tool_calling
    completion = await edge.openai().chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", "OpenAI ends a call forced by name with stop"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_1",
        "get_weather",
        {"city": "Oslo"},
    )
    assert edge.router.calls[-1].request.input.chat.tool_choice == "get_weather"

    events = await edge.stream_events(
        "/v1/chat/completions", {"messages": CHAT, "tools": TOOLS, "tool_choice": "auto", "stream": True}
    )
    for event in events:
        assert_matches("CreateChatCompletionStreamResponse", event)
    pieces = [p for e in events for c in e["choices"] for p in c["delta"].get("tool_calls", ())]
    assert pieces[0] == {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": '},
    }
    assert "".join(p["function"]["arguments"] for p in pieces) == '{"city": "Oslo"}'

    # A conversation that answers the call goes back to the router as such.
    await edge.openai().chat.completions.create(
        model="auto",
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        tools=TOOLS,
    )
    assistant, tool = edge.router.calls[-1].request.input.chat.messages[1:]
    assert assistant.tool_calls[0].id == "call_1" and tool.tool_call_id == "call_1"


async def test_streamed_request_breakdown_is_the_last_chunk_before_usage(edge: Edge):
    async def script(request, context):
        yield routed()
        yield delta(0, "I am", 0)
        yield delta(0, " fine", inference.FINISH_REASON_STOP)
        yield finished(
            prompt=6,
            completion=2,
            breakdown=router_pb2.RequestBreakdown(
                prompt_tokens=6,
                completion_tokens=2,
                cost=0.1,
                model="redacted",
                stream=request.stream,
                status_code=200,
            ),
        )

    edge.router.script = script
    body = {
        "messages": CHAT,
        "stream": True,
        "request_breakdown": True,
        "stream_options": {"include_usage": True},
        "metadata": {"k": "v"},
    }
    events = await edge.stream_events("/v1/chat/completions", body)
    for event in events:
        assert_matches("CreateChatCompletionStreamResponse", event)
    assert len({e["id"] for e in events}) == 1, "the breakdown chunk keeps the stream's id"
    breakdown_chunk, usage_chunk = events[-2:]
    assert usage_chunk["choices"] == []
    [choice] = breakdown_chunk["choices"]
    assert choice["finish_reason"] is None and choice["delta"] == {}
    breakdown = choice["request_breakdown"]
    assert (breakdown["stream"], breakdown["metadata"], breakdown["cost"]) == (True, {"k": "v"}, 0.1)
    assert breakdown["prompt_messages"] == CHAT
    assert breakdown["completion_message"] == {"role": "assistant", "content": "I am fine"}
    assert sum(1 for c in choices_by_index(events)[0] if c["finish_reason"]) == 1

    # disable_log: the same breakdown without the conversation.
    body = {"messages": CHAT, "request_breakdown": True, "disable_log": True}
    breakdown = (await edge.post("/v1/chat/completions", body)).json()["request_breakdown"]
    assert "prompt_messages" not in breakdown and "completion_message" not in breakdown
    assert edge.router.calls[-1].request.disable_log
