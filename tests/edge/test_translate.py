"""OpenAI wire format <-> the router's protobuf: what reaches the router, and what comes back."""

from __future__ import annotations

import json

import orjson
from google.protobuf.timestamp_pb2 import Timestamp

from services.edge import translate
from services.edge.protocol import ChatCompletionRequest, CompletionRequest
from switchyard.inference.v1 import inference_pb2 as inference
from switchyard.router.v1 import router_service_pb2 as router_pb2
from tests.openai_schema import assert_matches

USER = [{"role": "user", "content": "hi"}]


def completion(**body) -> CompletionRequest:
    return CompletionRequest.model_validate_json(orjson.dumps({"prompt": "hi", **body}))


def chat(**body) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate_json(orjson.dumps({"messages": USER, **body}))


# --- requests ------------------------------------------------------------------------------------


def test_sampling_fields_reach_the_router_and_unset_ones_stay_unset():
    request = translate.completion_generate_request(
        completion(
            temperature=0,
            top_k=5,
            stop="END",
            stop_token_ids=[7],
            seed=11,
            logit_bias={"42": -100},
            logprobs=2,
            echo=True,
            best_of=3,
            n=2,
            min_tokens=1,
            ignore_eos=True,
            include_stop_str_in_output=True,
            skip_special_tokens=False,
        ),
        "req-1",
    )
    sampling = request.input.sampling
    assert sampling.HasField("temperature") and sampling.temperature == 0, (
        "temperature 0 is greedy, not unset"
    )
    assert not sampling.HasField("top_p") and not sampling.HasField("repetition_penalty")
    assert sampling.max_tokens == 16
    assert (sampling.top_k, sampling.seed, sampling.logprobs, sampling.best_of, sampling.n) == (
        5,
        11,
        2,
        3,
        2,
    )
    assert list(sampling.stop) == ["END"] and list(sampling.stop_token_ids) == [7]
    assert dict(sampling.logit_bias) == {42: -100.0}
    assert sampling.echo and sampling.ignore_eos and sampling.include_stop_str_in_output
    assert sampling.min_tokens == 1
    assert sampling.HasField("skip_special_tokens") and not sampling.skip_special_tokens
    assert request.input.prompt.text == "hi"
    assert request.request_id == "req-1"


def test_routing_fields_reach_the_router():
    request = translate.completion_generate_request(
        completion(
            model="auto",
            router_preference="efficient",
            models=["a/x", "b/y"],
            fallback_models=["c/z"],
            exclude_models=["a/x"],
            exclude_providers=["b"],
            customer_identifier="cust-9",
            user="someone-else",
            metadata={"team": "search", "n": 3},
            request_breakdown=True,
            disable_log=True,
            stream=True,
        ),
        "req-1",
    )
    assert request.model == ""
    routing = request.routing
    assert routing.preference == router_pb2.ROUTER_PREFERENCE_EFFICIENT
    assert list(routing.models) == ["a/x", "b/y"] and list(routing.fallback_models) == ["c/z"]
    assert list(routing.exclude_models) == ["a/x"] and list(routing.exclude_providers) == ["b"]
    assert request.customer_identifier == "cust-9"
    assert dict(request.metadata) == {"team": "search", "n": 3}
    assert request.request_breakdown and request.disable_log and request.stream


def test_cache_false_keeps_the_request_out_of_the_response_cache():
    assert not translate.chat_generate_request(chat(), "r").disable_cache
    assert translate.chat_generate_request(chat(cache=False), "r").disable_cache
    assert translate.completion_generate_request(
        completion(prompt=["a", "b"], cache=False), "r"
    ).disable_cache


def test_several_prompts_are_one_router_request_with_a_batch():
    request = translate.completion_generate_request(completion(prompt=["a", "b c"], max_tokens=3), "r")
    assert request.request_id == "r" and not request.HasField("input")
    assert [prompt.prompt.text for prompt in request.batch] == ["a", "b c"]
    assert [prompt.sampling.max_tokens for prompt in request.batch] == [3, 3]
    tokens = translate.completion_generate_request(completion(prompt=[[1, 2], [3]]), "r")
    assert [list(prompt.tokens.token_ids) for prompt in tokens.batch] == [[1, 2], [3]]


def test_openai_user_names_the_customer_when_customer_identifier_is_absent():
    request = translate.completion_generate_request(completion(user="u-1"), "r")
    assert request.customer_identifier == "u-1"


def test_an_assistant_refusal_reaches_the_model_as_the_assistants_text():
    refused = {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]}
    request = translate.chat_generate_request(
        chat(messages=[{"role": "user", "content": "hi"}, refused]), "req-3"
    )
    assistant = request.input.chat.messages[1]
    assert (assistant.role, [part.text for part in assistant.parts]) == (
        "assistant",
        ["I can't help with that."],
    )


def test_legacy_functions_reach_the_router_as_tools():
    request = translate.chat_generate_request(
        chat(functions=[{"name": "look", "description": "looks"}], function_call={"name": "look"}), "req-4"
    )
    chat_input = request.input.chat
    assert [(tool.name, tool.description) for tool in chat_input.tools] == [("look", "looks")]
    assert chat_input.tool_choice == "look"


def test_chat_messages_tools_and_formats_reach_the_router():
    request = translate.chat_generate_request(
        chat(
            messages=[
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what?"},
                        {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "high"}},
                    ],
                },
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "look", "arguments": '{"a":1}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
            ],
            tools=[{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
            tool_choice={"type": "function", "function": {"name": "look"}},
            parallel_tool_calls=False,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "out", "schema": {"type": "object"}},
            },
            chat_template_kwargs={"enable_thinking": False},
            max_tokens=50,
            max_completion_tokens=9,
        ),
        "req-2",
    )
    chat_input = request.input.chat
    system, user, assistant, tool = chat_input.messages
    assert (system.role, system.content) == ("system", "be brief")
    assert user.parts[0].text == "what?"
    assert (user.parts[1].image_url.url, user.parts[1].image_url.detail) == ("https://x/cat.png", "high")
    assert not assistant.HasField("content")
    assert (assistant.tool_calls[0].function_name, assistant.tool_calls[0].function_arguments) == (
        "look",
        '{"a":1}',
    )
    assert (tool.tool_call_id, tool.content) == ("c1", "a cat")
    assert chat_input.tools[0].name == "look" and json.loads(chat_input.tools[0].parameters_json) == {
        "type": "object"
    }
    assert chat_input.tool_choice == "look"
    assert chat_input.HasField("parallel_tool_calls") and not chat_input.parallel_tool_calls
    assert chat_input.response_format.type == inference.ResponseFormat.TYPE_JSON_SCHEMA
    assert json.loads(chat_input.response_format.json_schema) == {"type": "object"}
    assert json.loads(chat_input.chat_template_kwargs_json) == {"enable_thinking": False}
    assert request.input.sampling.max_tokens == 9


def test_chat_logprobs_switch_becomes_a_count_of_alternatives():
    def logprobs(**body):
        sampling = translate.chat_generate_request(chat(**body), "r").input.sampling
        return sampling.logprobs if sampling.HasField("logprobs") else None

    assert logprobs() is None
    assert logprobs(logprobs=True) == 0
    assert logprobs(logprobs=True, top_logprobs=3) == 3


def test_chat_without_a_limit_leaves_max_tokens_unset():
    assert not translate.chat_generate_request(chat(), "r").input.sampling.HasField("max_tokens")


# --- responses -----------------------------------------------------------------------------------


def logprob(token: str, value: float | None, *alternatives: tuple[str, float]) -> inference.TokenLogprob:
    entry = inference.TokenLogprob(
        token=token, top_logprobs=[inference.TopLogprob(token=t, logprob=v) for t, v in alternatives]
    )
    if value is not None:
        entry.logprob = value
    return entry


def test_completion_logprobs_follow_openai_legacy_shape():
    choice = translate.CompletionChoiceBuilder(0, logprobs=True)
    # An echoed prompt: its first token has no logprob; then two generated tokens in two deltas.
    choice.add(
        inference.TokenDelta(
            text="The cat", logprobs=[logprob("The", None), logprob(" cat", -1.0, (" dog", -0.5))]
        )
    )
    choice.add(
        inference.TokenDelta(
            text=" sat", logprobs=[logprob(" sat", -0.25, (" sat", -0.25), (" ran", -2.0))], finish_reason=2
        )
    )
    built = choice.build()
    assert built["text"] == "The cat sat" and built["finish_reason"] == "length"
    assert built["logprobs"] == {
        "tokens": ["The", " cat", " sat"],
        "token_logprobs": [None, -1.0, -0.25],
        # The chosen token is always there beside the alternatives (OpenAI: up to logprobs + 1).
        "top_logprobs": [None, {" dog": -0.5, " cat": -1.0}, {" sat": -0.25, " ran": -2.0}],
        "text_offset": [0, 3, 7],
    }


def test_chat_choice_assembles_text_logprobs_and_finish():
    choice = translate.ChatChoiceBuilder(1, logprobs=True)
    choice.add(
        inference.TokenDelta(index=1, text="Hé", logprobs=[logprob("Hé", -0.1, ("Hé", -0.1), ("Ho", -3.0))])
    )
    choice.add(inference.TokenDelta(index=1, text="!", logprobs=[logprob("!", -0.2)], finish_reason=1))
    built = choice.build()
    assert built["index"] == 1 and built["finish_reason"] == "stop"
    assert built["message"] == {"role": "assistant", "content": "Hé!", "refusal": None}
    first = built["logprobs"]["content"][0]
    assert first["bytes"] == list("Hé".encode())
    assert [t["token"] for t in first["top_logprobs"]] == ["Hé", "Ho"]
    assert built["logprobs"]["refusal"] is None
    assert_matches(
        "CreateChatCompletionResponse",
        {"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [built]},
    )


def test_streamed_tool_call_pieces_become_one_call_with_null_content():
    choice = translate.ChatChoiceBuilder(0, logprobs=False)
    pieces = [
        inference.ToolCallDelta(index=0, id="call_a", function_name="look", function_arguments='{"ci'),
        inference.ToolCallDelta(index=0, function_arguments='ty": "Oslo"}'),
        inference.ToolCallDelta(index=1, id="call_b", function_name="time", function_arguments="{}"),
    ]
    choice.add(inference.TokenDelta(tool_calls=pieces[:1]))
    choice.add(inference.TokenDelta(tool_calls=pieces[1:], finish_reason=inference.FINISH_REASON_TOOL_CALLS))
    built = choice.build()
    assert built["finish_reason"] == "tool_calls"
    assert built["message"]["content"] is None
    assert built["message"]["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "look", "arguments": '{"city": "Oslo"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}},
    ]
    assert translate.tool_call_chunks(pieces[:2]) == [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "look", "arguments": '{"ci'}},
        {"index": 0, "function": {"arguments": 'ty": "Oslo"}'}},
    ]


def test_usage_counts_cached_prompt_tokens():
    usage = inference.Usage(prompt_tokens=8, completion_tokens=2, cached_tokens=4)
    assert translate.usage_dict(usage) == {
        "prompt_tokens": 8,
        "completion_tokens": 2,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


def breakdown(**fields) -> router_pb2.RequestBreakdown:
    timestamp = Timestamp(seconds=1708392219, nanos=329729000)
    defaults = dict(
        prompt_tokens=6,
        completion_tokens=9,
        cost=4.8e-5,
        model="redacted",
        category="questions",
        preference=router_pb2.ROUTER_PREFERENCE_POWERFUL,
        scores=[router_pb2.CandidateScore(model="redacted", score=0.9, eligible=True)],
        routing_time=0.01,
        latency=1.5,
        time_to_first_token=0.2,
        attempts=1,
        timestamp=timestamp,
        status_code=200,
    )
    return router_pb2.RequestBreakdown(**{**defaults, **fields})


def test_breakdown_has_seed_003_fields_and_logs_only_without_disable_log():
    request = chat(metadata={"n": 3}, request_breakdown=True)
    completion_message = {"role": "assistant", "content": "fine"}
    result = translate.breakdown_dict(
        breakdown(),
        metadata=request.metadata,
        logged=translate.chat_logged_messages(request, completion_message),
    )
    assert result["timestamp"] == "2024-02-20T01:23:39.329729Z"
    assert result["metadata"] == {"n": 3}, "the caller's integers stay integers"
    assert result["router_preference"] == "powerful"
    assert result["scores"][0]["excluded_reason"] is None
    assert result["prompt_messages"] == USER and result["completion_message"] == completion_message
    for key in (
        "prompt_tokens",
        "completion_tokens",
        "cost",
        "model",
        "category",
        "scores",
        "routing_time",
        "latency",
        "time_to_first_token",
        "attempts",
        "fallbacks_used",
        "cached",
        "status_code",
        "stream",
    ):
        assert key in result, key

    quiet = chat(request_breakdown=True, disable_log=True)
    assert translate.chat_logged_messages(quiet, completion_message) is None
    result = translate.breakdown_dict(breakdown(), metadata=None, logged=None)
    assert "prompt_messages" not in result and "completion_message" not in result


def test_models_are_openai_model_objects():
    model = translate.model_object(
        router_pb2.Model(id="acme/big:2", provider="cloud", created=17, context_window=8)
    )
    assert_matches("Model", model)
    assert model["owned_by"] == "acme"
