"""The OpenAI API through all three services, as a user of the official SDK sees it.

Every body and SSE chunk seen here is also checked against the official OpenAI schemas."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.e2e.conftest import API_KEY, FAST_MODEL, SLOW_MODEL, Suite
from tests.openai_schema import assert_matches

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three rivers."}]


async def post_json(suite: Suite, path: str, body: dict, headers: dict | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=suite.base_url, timeout=30) as http:
        return await http.post(path, json=body, headers={**AUTH, **(headers or {})})


async def sse_chunks(suite: Suite, path: str, body: dict, headers: dict | None = None) -> list[dict]:
    """The stream's JSON events in order; asserts it ends with [DONE] and nothing after it."""
    chunks, done = [], False
    async with httpx.AsyncClient(base_url=suite.base_url, timeout=30) as http:
        async with http.stream("POST", path, json=body, headers={**AUTH, **(headers or {})}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-store"
            async for line in response.aiter_lines():
                if not line:
                    continue
                assert line.startswith("data: "), line
                assert not done, "data after [DONE]"
                if line == "data: [DONE]":
                    done = True
                else:
                    chunks.append(json.loads(line.removeprefix("data: ")))
    assert done, "stream did not end with [DONE]"
    return chunks


# --- chat ---------------------------------------------------------------------------------------


async def test_chat_completion_answers_with_a_valid_body(suite: Suite):
    client = suite.client()
    completion = await client.chat.completions.create(model=FAST_MODEL, messages=CHAT, max_tokens=12)
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens <= 12
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert completion.model == FAST_MODEL, "the model the caller named is echoed: it reveals nothing new"
    chosen = await client.chat.completions.create(model="auto", messages=CHAT, max_tokens=2)
    assert chosen.model == "redacted", "a model the router chose stays redacted, as the seeds' routers do"

    raw = await post_json(
        suite, "/v1/chat/completions", {"model": FAST_MODEL, "messages": CHAT, "max_tokens": 12}
    )
    assert raw.status_code == 200
    assert_matches("CreateChatCompletionResponse", raw.json())


async def test_router_chooses_when_no_model_is_given(suite: Suite):
    raw = await post_json(suite, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 4})
    assert raw.status_code == 200, raw.text
    assert raw.json()["choices"][0]["message"]["content"]


async def test_chat_stream_sends_role_first_and_one_finish_per_choice(suite: Suite):
    body = {"model": FAST_MODEL, "messages": CHAT, "max_tokens": 10, "n": 3, "stream": True}
    chunks = await sse_chunks(suite, "/v1/chat/completions", body)
    for chunk in chunks:
        assert_matches("CreateChatCompletionStreamResponse", chunk)
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    by_choice: dict[int, list[dict]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            by_choice.setdefault(choice["index"], []).append(choice)
    assert sorted(by_choice) == [0, 1, 2]
    for choices in by_choice.values():
        assert choices[0]["delta"].get("role") == "assistant"
        assert sum(1 for c in choices if c["finish_reason"]) == 1
        assert choices[-1]["finish_reason"] in ("stop", "length")

    # The SDK reassembles the same stream.
    stream = await suite.client().chat.completions.create(
        model=FAST_MODEL, messages=CHAT, max_tokens=10, temperature=0, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    full = await suite.client().chat.completions.create(
        model=FAST_MODEL, messages=CHAT, max_tokens=10, temperature=0
    )
    assert text == full.choices[0].message.content


async def test_include_usage_adds_a_last_chunk_with_empty_choices(suite: Suite):
    body = {
        "model": FAST_MODEL,
        "messages": CHAT,
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = await sse_chunks(suite, "/v1/chat/completions", body)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] <= 5
    assert all(c.get("usage") is None for c in chunks[:-1])
    for chunk in chunks:
        assert_matches("CreateChatCompletionStreamResponse", chunk)


async def test_greedy_and_seeded_sampling_repeat_themselves(suite: Suite):
    client = suite.client()

    async def ask(**kw) -> str:
        completion = await client.chat.completions.create(
            model=FAST_MODEL, messages=CHAT, max_tokens=16, **kw
        )
        return completion.choices[0].message.content

    assert await ask(temperature=0) == await ask(temperature=0)
    assert await ask(temperature=1.0, seed=7) == await ask(temperature=1.0, seed=7)


async def test_top_p_0_is_accepted_and_keeps_only_the_most_likely_token(suite: Suite):
    async def text(**sampling) -> str:
        completion = await suite.client().completions.create(
            model=FAST_MODEL,
            prompt="Once upon a time",
            max_tokens=12,
            extra_body={"cache": False},
            **sampling,
        )
        return completion.choices[0].text

    greedy = await text(temperature=0)
    assert await text(top_p=0, temperature=1.5, seed=1) == greedy
    assert await text(top_p=0, temperature=1.5, seed=2) == greedy
    assert await text(temperature=1.5, seed=1) != greedy, "without top_p 0 these seeds sample"


async def test_stop_sequence_ends_the_text_before_it(suite: Suite):
    client = suite.client()
    prompt = "Count the ways:"
    free = await client.completions.create(model=FAST_MODEL, prompt=prompt, max_tokens=16, temperature=0)
    words = free.choices[0].text.split()
    assert len(words) >= 4, free.choices[0].text
    stop = words[3]
    stopped = await client.completions.create(
        model=FAST_MODEL, prompt=prompt, max_tokens=16, temperature=0, stop=[stop]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stop not in stopped.choices[0].text
    assert free.choices[0].text.startswith(stopped.choices[0].text)


async def test_chat_logprobs_rank_the_greedy_token_first(suite: Suite):
    completion = await suite.client().chat.completions.create(
        model=FAST_MODEL, messages=CHAT, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = completion.choices[0].logprobs.content
    assert len(content) == completion.usage.completion_tokens
    assert "".join(t.token for t in content) == completion.choices[0].message.content
    for token in content:
        assert len(token.top_logprobs) == 3
        assert token.top_logprobs[0].token == token.token
        assert token.logprob <= 0


async def test_tool_call_is_returned_as_tool_calls(suite: Suite):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    completion = await suite.client().chat.completions.create(
        model=FAST_MODEL,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = completion.choices[0]
    # As OpenAI answers: a function forced by name ends with "stop", a required call with "tool_calls".
    assert choice.finish_reason == "stop"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


async def test_a_streamed_tool_call_accumulates_to_null_content_and_text_opens_with_empty_content(
    suite: Suite,
):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    async with suite.client().chat.completions.stream(
        model=FAST_MODEL,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=tools,
        tool_choice="required",
    ) as stream:
        chunks = [event.chunk async for event in stream if event.type == "chunk"]
        message = (await stream.get_final_completion()).choices[0].message
    assert message.content is None and message.tool_calls
    opening = chunks[0].choices[0].delta
    assert (opening.role, opening.content, opening.tool_calls[0].function.name) == (
        "assistant",
        None,
        "get_weather",
    )

    stream = await suite.client().chat.completions.create(
        model=FAST_MODEL, messages=CHAT, max_tokens=3, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.model_dump(exclude_none=True) == {"role": "assistant", "content": ""}
    assert all(choice.delta.tool_calls is None for chunk in chunks for choice in chunk.choices)


async def test_json_schema_response_format_gives_parseable_json(suite: Suite):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    completion = await suite.client().chat.completions.create(
        model=FAST_MODEL,
        messages=CHAT,
        max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "count", "schema": schema}},
    )
    assert isinstance(json.loads(completion.choices[0].message.content)["n"], int)


# --- completions --------------------------------------------------------------------------------


async def test_completion_defaults_to_16_tokens(suite: Suite):
    completion = await suite.client().completions.create(
        model=FAST_MODEL, prompt="Once upon a time", extra_body={"ignore_eos": True}
    )
    assert completion.usage.completion_tokens == 16
    assert completion.choices[0].finish_reason == "length"
    raw = await post_json(suite, "/v1/completions", {"model": FAST_MODEL, "prompt": "Once upon a time"})
    assert_matches("CreateCompletionResponse", raw.json())


async def test_several_prompts_and_n_give_one_choice_set_per_prompt(suite: Suite):
    completion = await suite.client().completions.create(
        model=FAST_MODEL, prompt=["first prompt", "second prompt"], n=2, max_tokens=4, temperature=0
    )
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    # Greedy choices of one prompt agree; the two prompts differ.
    assert completion.choices[0].text == completion.choices[1].text
    assert completion.choices[0].text != completion.choices[2].text


async def test_echo_with_logprobs_returns_the_prompt_first(suite: Suite):
    prompt = "The quick brown fox"
    completion = await suite.client().completions.create(
        model=FAST_MODEL, prompt=prompt, max_tokens=4, echo=True, logprobs=2, temperature=0
    )
    choice = completion.choices[0]
    assert choice.text.startswith(prompt)
    logprobs = choice.logprobs
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.token_logprobs[0] is None, "the first prompt token has no context"
    assert len(logprobs.text_offset) == len(logprobs.tokens)


async def test_completion_stream_validates_and_joins(suite: Suite):
    body = {
        "model": FAST_MODEL,
        "prompt": "Tell me",
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = await sse_chunks(suite, "/v1/completions", body)
    for chunk in chunks[:-1]:
        assert_matches("CreateCompletionStreamResponse", chunk)
    assert chunks[-1]["usage"]["completion_tokens"] <= 8


# --- routing extras -----------------------------------------------------------------------------


async def test_request_breakdown_reports_tokens_and_cost(suite: Suite):
    raw = await post_json(
        suite,
        "/v1/chat/completions",
        {"model": FAST_MODEL, "messages": CHAT, "max_tokens": 5, "request_breakdown": True},
    )
    body = raw.json()
    breakdown = body["request_breakdown"]
    assert breakdown["prompt_tokens"] == body["usage"]["prompt_tokens"]
    assert breakdown["completion_tokens"] == body["usage"]["completion_tokens"]
    assert breakdown["cost"] > 0
    # The caller named the model: the breakdown says it as the response does.
    assert breakdown["model"] == body["model"] == FAST_MODEL
    assert breakdown["stream"] is False

    chosen = (
        await post_json(
            suite, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 5, "request_breakdown": True}
        )
    ).json()
    assert chosen["model"] == chosen["request_breakdown"]["model"] == "redacted", "the router chose"
    assert {score["model"] for score in chosen["request_breakdown"]["scores"]} == {"redacted"}

    chunks = await sse_chunks(
        suite,
        "/v1/chat/completions",
        {"model": FAST_MODEL, "messages": CHAT, "max_tokens": 5, "stream": True, "request_breakdown": True},
    )
    last = chunks[-1]
    assert last["id"] == chunks[0]["id"]
    assert last["choices"][0]["request_breakdown"]["stream"] is True


async def test_request_id_is_echoed(suite: Suite):
    raw = await post_json(
        suite,
        "/v1/chat/completions",
        {"model": FAST_MODEL, "messages": CHAT, "max_tokens": 2},
        headers={"x-request-id": "req-e2e-123"},
    )
    assert raw.headers["x-request-id"] == "req-e2e-123"


async def test_response_and_tool_call_ids_are_unique_when_a_request_id_is_reused(suite: Suite):
    body = {
        "model": FAST_MODEL,
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather"}}],
        "tool_choice": "required",
        "temperature": 0,
        "cache": False,
    }
    headers = {"x-request-id": "req-reused"}
    first, second = [
        (await post_json(suite, "/v1/chat/completions", body, headers=headers)).json() for _ in range(2)
    ]
    assert first["id"] != second["id"]
    call_ids = [response["choices"][0]["message"]["tool_calls"][0]["id"] for response in (first, second)]
    assert call_ids[0] != call_ids[1]


async def test_models_are_listed_and_retrievable(suite: Suite):
    client = suite.client()
    models = await client.models.list()
    ids = [m.id for m in models.data]
    assert FAST_MODEL in ids and SLOW_MODEL in ids
    assert (await client.models.retrieve(FAST_MODEL)).id == FAST_MODEL
    async with httpx.AsyncClient(base_url=suite.base_url) as http:
        assert_matches("ListModelsResponse", (await http.get("/v1/models", headers=AUTH)).json())


# --- errors -------------------------------------------------------------------------------------


async def test_wrong_or_missing_key_is_401(suite: Suite):
    bad = openai.AsyncOpenAI(base_url=f"{suite.base_url}/v1", api_key="sy-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        await bad.chat.completions.create(model=FAST_MODEL, messages=CHAT)
    assert_matches("ErrorResponse", caught.value.response.json())
    async with httpx.AsyncClient(base_url=suite.base_url) as http:
        response = await http.post("/v1/chat/completions", json={"model": FAST_MODEL, "messages": CHAT})
    assert response.status_code == 401
    assert_matches("ErrorResponse", response.json())


@pytest.mark.parametrize("body", [b"{bad", b'{"messages": "x", "prompt": 3}'])
async def test_a_wrong_key_is_401_before_the_body_is_looked_at(suite: Suite, body):
    async with httpx.AsyncClient(base_url=suite.base_url) as http:
        for path in ("/v1/chat/completions", "/v1/completions"):
            response = await http.post(path, content=body, headers={"Authorization": "Bearer nope"})
            assert response.status_code == 401, path
            assert response.json()["error"]["code"] == "invalid_api_key"
            # With the right key, the same body is the caller's mistake.
            response = await http.post(path, content=body, headers=AUTH)
            assert response.status_code == 400, path


async def test_invalid_parameter_is_400_naming_it(suite: Suite):
    with pytest.raises(openai.BadRequestError) as caught:
        await suite.client().chat.completions.create(model=FAST_MODEL, messages=CHAT, temperature=5)
    error = caught.value.response.json()
    assert_matches("ErrorResponse", error)
    assert error["error"]["param"] == "temperature"


async def test_malformed_json_is_400(suite: Suite):
    async with httpx.AsyncClient(base_url=suite.base_url) as http:
        response = await http.post(
            "/v1/chat/completions", content=b"{not json", headers={**AUTH, "content-type": "application/json"}
        )
    assert response.status_code == 400
    assert_matches("ErrorResponse", response.json())


async def test_unknown_model_is_404_model_not_found(suite: Suite):
    with pytest.raises(openai.NotFoundError) as caught:
        await suite.client().chat.completions.create(model="nobody/nothing", messages=CHAT)
    error = caught.value.response.json()
    assert_matches("ErrorResponse", error)
    assert error["error"]["code"] == "model_not_found"


async def test_prompt_too_long_is_400_context_length_exceeded(suite: Suite):
    with pytest.raises(openai.BadRequestError) as caught:
        await suite.client().completions.create(model=FAST_MODEL, prompt="word " * 5000, max_tokens=4)
    assert caught.value.response.json()["error"]["code"] == "context_length_exceeded"


# --- cancellation -------------------------------------------------------------------------------


async def test_client_disconnect_mid_stream_stops_the_engine(suite: Suite):
    body = {"model": SLOW_MODEL, "prompt": "go on", "max_tokens": 400, "stream": True}
    async with httpx.AsyncClient(base_url=suite.base_url, timeout=30) as http:
        async with http.stream("POST", "/v1/completions", json=body, headers=AUTH) as response:
            lines = response.aiter_lines()
            received = 0
            async for line in lines:
                received += line.startswith("data: ")
                if received == 2:
                    break
            assert await suite.running_requests(suite.slow_engine) == 1
    # The connection is closed: the engine's own load report must show nothing running.
    assert await suite.wait_until_idle(suite.slow_engine) == 0


async def test_timeout_answers_504_and_cancels_the_generation(suite: Suite):
    raw = await post_json(
        suite, "/v1/completions", {"model": SLOW_MODEL, "prompt": "go on", "max_tokens": 400, "timeout": 0.3}
    )
    assert raw.status_code == 504
    assert_matches("ErrorResponse", raw.json())
    assert raw.json()["error"]["type"] == "timeout_error"
    assert await suite.wait_until_idle(suite.slow_engine) == 0


async def test_timeout_while_streaming_is_an_error_event(suite: Suite):
    chunks = await sse_chunks(
        suite,
        "/v1/completions",
        {"model": SLOW_MODEL, "prompt": "go on", "max_tokens": 400, "stream": True, "timeout": 0.3},
    )
    assert "error" in chunks[-1]
    assert_matches("ErrorResponse", chunks[-1])
    assert await suite.wait_until_idle(suite.slow_engine) == 0


async def test_legacy_functions_are_answered_with_tool_calls(suite: Suite):
    completion = await suite.client().chat.completions.create(
        model=FAST_MODEL,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        functions=[{"name": "get_weather", "parameters": {"type": "object"}}],
        function_call={"name": "get_weather"},
    )
    assert_matches("CreateChatCompletionResponse", completion.model_dump(mode="json", exclude_unset=True))
    message = completion.choices[0].message
    assert message.tool_calls[0].function.name == "get_weather"
    assert message.function_call is None, "the legacy response field is not produced"


async def test_a_replayed_refusal_and_tool_round_trip_are_accepted(suite: Suite):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    completion = await suite.client().chat.completions.create(
        model=FAST_MODEL,
        messages=[
            {"role": "user", "content": "Insult me."},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "I won't."}]},
            {"role": "user", "content": "Weather in Oslo, then?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
    )
    assert completion.choices[0].message.content


async def test_a_tool_message_answering_no_call_is_400_naming_it(suite: Suite):
    with pytest.raises(openai.BadRequestError) as caught:
        await suite.client().chat.completions.create(
            model=FAST_MODEL,
            messages=[*CHAT, {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
        )
    error = caught.value.response.json()
    assert_matches("ErrorResponse", error)
    assert error["error"]["param"] == "messages[2].tool_call_id"


async def test_an_empty_prompt_is_continued_from_nothing(suite: Suite):
    completion = await suite.client().completions.create(
        model=FAST_MODEL, prompt=["", "Once"], max_tokens=3, extra_body={"ignore_eos": True}
    )
    assert [choice.index for choice in completion.choices] == [0, 1]
    assert all(choice.text for choice in completion.choices)


async def test_finish_reason_of_tool_calls_follows_openai_by_tool_choice(suite: Suite):
    tools = [{"type": "function", "function": {"name": "ping", "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": "Ping?"}]
    named = {"type": "function", "function": {"name": "ping"}}
    for tool_choice, expected in ((named, "stop"), ("required", "tool_calls")):
        completion = await suite.client().chat.completions.create(
            model=FAST_MODEL, messages=messages, tools=tools, tool_choice=tool_choice
        )
        assert completion.choices[0].finish_reason == expected
        stream = await suite.client().chat.completions.create(
            model=FAST_MODEL, messages=messages, tools=tools, tool_choice=tool_choice, stream=True
        )
        finishes = [
            chunk.choices[0].finish_reason
            async for chunk in stream
            if chunk.choices and chunk.choices[0].finish_reason
        ]
        assert finishes == [expected]
