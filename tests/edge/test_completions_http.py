"""POST /v1/completions over real HTTP, with the official openai SDK as the client where it can be."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from switchyard.inference.v1 import inference_pb2 as inference
from switchyard.router.v1 import router_service_pb2 as router_pb2
from tests.edge.conftest import API_KEY, Edge, delta, finished, routed
from tests.openai_schema import assert_matches


async def test_completion_answers_with_the_routers_text_and_usage(edge: Edge):
    completion = await edge.openai().completions.create(
        model="switchyard/sim", prompt="Once upon a time", max_tokens=3
    )
    assert completion.choices[0].text == "w0 w1 w2"
    assert completion.choices[0].finish_reason == "length"
    assert completion.model == "redacted"
    assert completion.id.startswith("cmpl-")
    assert (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
        completion.usage.total_tokens,
    ) == (
        4,
        3,
        7,
    )

    call = edge.router.calls[-1]
    assert call.request.model == "switchyard/sim"
    assert call.request.input.sampling.max_tokens == 3
    assert call.metadata["authorization"] == f"Bearer {API_KEY}"

    raw = await edge.post("/v1/completions", {"prompt": "Once upon a time"})
    assert raw.status_code == 200
    assert_matches("CreateCompletionResponse", raw.json())
    assert edge.router.calls[-1].request.input.sampling.max_tokens == 16, "the seeds' default"


async def test_n_and_several_prompts_give_one_choice_set_per_prompt(edge: Edge):
    completion = await edge.openai().completions.create(
        model="auto", prompt=["first prompt", "second"], n=2, max_tokens=2
    )
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert [c.text for c in completion.choices] == ["p0w0 p0w1", "p1w0 p1w1", "p0w0 p0w1", "p1w0 p1w1"]
    assert completion.usage.prompt_tokens == 3, "prompt tokens add up over the prompts"
    assert completion.usage.completion_tokens == 8
    [call] = edge.router.calls
    assert [prompt.prompt.text for prompt in call.request.batch] == ["first prompt", "second"]


async def test_logprobs_come_back_in_the_legacy_shape(edge: Edge):
    completion = await edge.openai().completions.create(model="auto", prompt="hi", max_tokens=3, logprobs=2)
    logprobs = completion.choices[0].logprobs
    assert logprobs.tokens == ["w0", " w1", " w2"]
    assert logprobs.token_logprobs == [-0.5, -0.5, -0.5]
    assert logprobs.text_offset == [0, 2, 5]
    assert logprobs.top_logprobs[1] == {" w1": -0.5, "alt1": -1.5}
    raw = await edge.post("/v1/completions", {"prompt": "hi", "max_tokens": 3, "logprobs": 2})
    assert_matches("CreateCompletionResponse", raw.json())


async def test_stream_sends_text_as_it_comes_and_usage_last(edge: Edge):
    body = {
        "prompt": ["a b", "c"],
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = await edge.stream_events("/v1/completions", body)
    for event in events:
        assert_matches("CreateCompletionStreamResponse", event)
    assert len({(e["id"], e["created"], e["model"]) for e in events}) == 1
    *chunks, usage = events
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    assert all(chunk["usage"] is None for chunk in chunks)
    texts: dict[int, str] = {}
    finishes: dict[int, list[str]] = {}
    for chunk in chunks:
        [choice] = chunk["choices"]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        if choice["finish_reason"]:
            finishes.setdefault(choice["index"], []).append(choice["finish_reason"])
    assert texts == {0: "w0 w1 w2", 1: "w0 w1 w2"}
    assert finishes == {0: ["length"], 1: ["length"]}

    # The SDK reads the same stream.
    stream = await edge.openai().completions.create(model="auto", prompt="x", max_tokens=4, stream=True)
    assert "".join([chunk.choices[0].text async for chunk in stream]) == "w0 w1 w2 w3"


async def test_streamed_logprobs_count_text_offsets_per_choice(edge: Edge):
    events = await edge.stream_events(
        "/v1/completions", {"prompt": "x", "max_tokens": 3, "n": 2, "stream": True, "logprobs": 1}
    )
    offsets: dict[int, list[int]] = {}
    for event in events:
        [choice] = event["choices"]
        offsets.setdefault(choice["index"], []).extend(choice["logprobs"]["text_offset"])
    assert offsets == {0: [0, 4, 9], 1: [0, 4, 9]}


def a_breakdown(**fields) -> router_pb2.RequestBreakdown:
    return router_pb2.RequestBreakdown(
        prompt_tokens=2,
        completion_tokens=1,
        cost=0.25,
        model="redacted",
        category="chat",
        attempts=1,
        timestamp=Timestamp(seconds=1700000000),
        status_code=200,
        **fields,
    )


async def test_request_breakdown_of_several_prompts_is_the_routers_one(edge: Edge):
    async def script(request, context):
        yield routed()
        yield delta(0, "ok", inference.FINISH_REASON_STOP)
        if request.batch:
            yield delta(1, "fine", inference.FINISH_REASON_STOP)
        yield finished(prompt=2, completion=1, breakdown=a_breakdown(stream=request.stream))

    edge.router.script = script
    body = {"prompt": ["one", "two"], "request_breakdown": True, "metadata": {"team": 7}}
    response = (await edge.post("/v1/completions", body)).json()
    assert_matches("CreateCompletionResponse", response)
    breakdown = response["request_breakdown"]
    assert (breakdown["prompt_tokens"], breakdown["completion_tokens"], breakdown["cost"]) == (2, 1, 0.25)
    assert breakdown["metadata"] == {"team": 7}
    assert (breakdown["prompt"], breakdown["completion"]) == (["one", "two"], "ok")
    assert breakdown["timestamp"] == "2023-11-14T22:13:20Z"
    assert edge.router.calls[-1].request.request_breakdown

    events = await edge.stream_events(
        "/v1/completions", {"prompt": "one", "request_breakdown": True, "stream": True}
    )
    for event in events:
        assert_matches("CreateCompletionStreamResponse", event)
    last = events[-1]["choices"][0]
    assert last["request_breakdown"]["stream"] is True
    assert last["finish_reason"] is None and last["text"] == ""
    assert sum(1 for e in events if e["choices"][0]["finish_reason"]) == 1
