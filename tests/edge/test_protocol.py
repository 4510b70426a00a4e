"""What the edge accepts and what it refuses (400 naming the parameter), as a client sees it."""

from __future__ import annotations

import orjson
import pytest

from services.edge.errors import ApiError
from services.edge.protocol import ChatCompletionRequest, CompletionRequest, NamedToolChoice
from services.edge.serving import parse_request

USER = [{"role": "user", "content": "hi"}]


def completion(**body) -> CompletionRequest:
    return parse_request(orjson.dumps({"prompt": "hi", **body}), CompletionRequest, "test")


def chat(**body) -> ChatCompletionRequest:
    return parse_request(orjson.dumps({"messages": USER, **body}), ChatCompletionRequest, "test")


def refusal(parse, **body) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(**body)
    assert caught.value.status == 400
    assert caught.value.type == "invalid_request_error"
    return caught.value


# --- accepted ------------------------------------------------------------------------------------


def test_completions_default_to_16_tokens_and_one_choice():
    request = completion()
    assert (request.max_tokens, request.n, request.stream, request.explicit_model) == (16, 1, False, "")


@pytest.mark.parametrize(
    ("prompt", "prompts"),
    [
        ("one", ["one"]),
        (["one", "two"], ["one", "two"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
        ("", [""]),
        (["a", ""], ["a", ""]),
    ],
)
def test_every_prompt_shape_of_the_spec_is_accepted(prompt, prompts):
    assert completion(prompt=prompt).prompts() == prompts


def test_best_of_takes_openais_range_where_0_means_not_given():
    assert (completion(best_of=0).candidates, completion(best_of=20, n=20).candidates) == (None, 20)


def test_null_means_the_same_as_absent():
    request = completion(max_tokens=None, n=None, stop=None, temperature=None)
    assert (request.max_tokens, request.n, request.stop, request.temperature) == (16, 1, None, None)


def test_unknown_fields_are_ignored_not_refused():
    request = chat(some_future_field={"x": 1}, service_tier="auto")
    assert sorted(request.model_extra) == ["service_tier", "some_future_field"]


def test_auto_or_empty_model_lets_the_router_choose():
    assert chat(model="auto").explicit_model == ""
    assert chat(model="").explicit_model == ""
    assert chat(model="acme/big:2").explicit_model == "acme/big:2"


def test_every_role_and_content_form_is_accepted():
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": [{"type": "text", "text": "really brief"}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            ],
            "name": "ann",
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
    ]
    request = chat(messages=messages)
    assert [m.role for m in request.messages] == ["system", "developer", "user", "assistant", "tool"]


def test_max_completion_tokens_wins_over_max_tokens():
    assert chat(max_tokens=50, max_completion_tokens=7).output_limit == 7
    assert chat(max_tokens=50).output_limit == 50
    assert chat().output_limit is None, "chat without a limit runs until the context ends"


def test_named_tool_choice_and_json_schema_format_are_accepted():
    tools = [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}]
    request = chat(
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "look"}},
        response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}}},
    )
    assert isinstance(request.tool_choice, NamedToolChoice)
    assert request.response_format.json_schema.schema_ == {"type": "object"}


# --- refused, naming the parameter ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"min_p": 2}, "min_p"),
        ({"top_k": -2}, "top_k"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 3}, "stop"),
        ({"logit_bias": {"not-a-token": 1}}, "logit_bias"),
        ({"logit_bias": {"50256": 101}}, "logit_bias.50256"),
        ({"logprobs": 6}, "logprobs"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"best_of": 1, "n": 2}, "best_of"),
        ({"best_of": 21}, "best_of"),
        ({"best_of": -1}, "best_of"),
        ({"best_of": 2, "stream": True}, "best_of"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"min_tokens": 20, "max_tokens": 10}, "min_tokens"),
        ({"router_preference": "fastest"}, "router_preference"),
        ({"timeout": 0}, "timeout"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["one", 2]}, "prompt[1]"),
        ({"prompt": ["one", "two", None]}, "prompt[2]"),
        ({"prompt": [[1, 2], []]}, "prompt[1]"),
        ({"prompt": {"text": "hi"}}, "prompt"),
    ],
)
def test_completion_parameters_out_of_range_are_refused(body, param):
    assert refusal(completion, **body).param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"messages": [*USER, {"role": "assistant", "content": None}]}, "messages[1].content"),
        ({"messages": [*USER, {"role": "assistant"}]}, "messages[1].content"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0].content[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content",
        ),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ],
)
def test_chat_parameters_out_of_range_are_refused(body, param):
    assert refusal(chat, **body).param == param


def _assistant_calling(*call_ids: str) -> dict:
    calls = [{"id": i, "type": "function", "function": {"name": "look", "arguments": "{}"}} for i in call_ids]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def test_a_tool_message_without_an_earlier_tool_call_is_refused_as_openai_refuses_it():
    messages = [*USER, {"role": "tool", "tool_call_id": "call_1", "content": "a cat"}]
    error = refusal(chat, messages=messages)
    assert error.param == "messages[1].tool_call_id"
    assert "must be a response to a preceeding message with 'tool_calls'" in error.message


def test_a_tool_message_must_answer_a_call_the_assistant_made():
    messages = [
        *USER,
        _assistant_calling("call_1", "call_2"),
        {"role": "tool", "tool_call_id": "call_2", "content": "a cat"},
        {"role": "tool", "tool_call_id": "call_9", "content": "a dog"},
    ]
    error = refusal(chat, messages=messages)
    assert error.param == "messages[3].tool_call_id" and "'call_9' not found" in error.message


def test_a_tool_message_may_answer_a_call_from_an_earlier_turn():
    messages = [
        *USER,
        _assistant_calling("call_1"),
        {"role": "assistant", "content": "let me look"},
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
    ]
    assert chat(messages=messages).messages[3].tool_call_id == "call_1"


def test_assistant_refusal_parts_are_accepted():
    refused = {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]}
    request = chat(messages=[*USER, refused, *USER])
    assert request.messages[1].content[0].refusal == "I can't help with that."


def test_refusal_parts_belong_to_assistant_messages_only():
    messages = [{"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}]
    assert refusal(chat, messages=messages).param == "messages[0].content"


LOOK = {"name": "look", "parameters": {"type": "object"}}


def test_legacy_functions_and_function_call_become_tools_and_tool_choice():
    request = chat(functions=[LOOK], function_call={"name": "look"})
    assert [(tool.type, tool.function.name) for tool in request.tools] == [("function", "look")]
    assert isinstance(request.tool_choice, NamedToolChoice) and request.tool_choice.function.name == "look"
    assert chat(functions=[LOOK], function_call="none").tool_choice == "none"
    assert chat(functions=[LOOK]).tool_choice is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"functions": [LOOK], "tools": [{"type": "function", "function": LOOK}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"functions": [LOOK], "function_call": {"name": "jump"}}, "function_call"),
        ({"functions": [LOOK], "function_call": "required"}, "function_call"),
        ({"functions": [LOOK], "function_call": "auto", "tool_choice": "auto"}, "function_call"),
        ({"functions": [{"name": "bad name"}]}, "functions[0].name"),
    ],
)
def test_legacy_functions_are_refused_where_tools_would_be(body, param):
    assert refusal(chat, **body).param == param


def test_function_role_messages_are_refused_with_what_to_send_instead():
    error = refusal(chat, messages=[{"role": "function", "name": "look", "content": "a cat"}])
    assert error.param == "messages[0].role" and "'tool' message with the tool_call_id" in error.message


def test_a_tool_choice_must_name_one_of_the_tools():
    tools = [{"type": "function", "function": {"name": "look"}}]
    error = refusal(chat, tools=tools, tool_choice={"type": "function", "function": {"name": "jump"}})
    assert error.param == "tool_choice" and "jump" in error.message


def test_malformed_json_is_a_400_without_a_param():
    with pytest.raises(ApiError) as caught:
        parse_request(b'{"prompt": "hi",', CompletionRequest, "test")
    assert (caught.value.status, caught.value.param) == (400, None)
    assert "JSON" in caught.value.message


def test_a_body_that_is_not_an_object_is_a_400():
    with pytest.raises(ApiError) as caught:
        parse_request(b"[1, 2]", ChatCompletionRequest, "test")
    assert caught.value.status == 400 and "object" in caught.value.message


# --- strict JSON types, as OpenAI checks them ----------------------------------------------------


@pytest.mark.parametrize(
    ("parse", "body", "param", "message"),
    [
        (completion, {"temperature": "0.5"}, "temperature", "expected a number, but got a string"),
        (completion, {"stream": "yes"}, "stream", "expected a boolean, but got a string"),
        (completion, {"max_tokens": True}, "max_tokens", "expected an integer, but got a boolean"),
        (completion, {"n": "2"}, "n", "expected an integer, but got a string"),
        (completion, {"echo": "true"}, "echo", "expected a boolean, but got a string"),
        (completion, {"logprobs": True}, "logprobs", "expected an integer, but got a boolean"),
        (completion, {"ignore_eos": "on"}, "ignore_eos", "expected a boolean, but got a string"),
        (chat, {"n": 2.0}, "n", "expected an integer, but got a decimal"),
        (chat, {"stream": 0}, "stream", "expected a boolean, but got an integer"),
        (chat, {"logprobs": "true"}, "logprobs", "expected a boolean, but got a string"),
        (chat, {"stream_options": "usage"}, "stream_options", "expected an object, but got a string"),
    ],
)
def test_a_value_of_the_wrong_json_type_is_refused_not_converted(parse, body, param, message):
    error = refusal(parse, **body)
    assert error.param == param
    assert error.message.startswith(f"Invalid type for '{param}': {message} instead.")


def test_json_integers_are_numbers():
    request = completion(temperature=1, top_p=1, presence_penalty=-1)
    assert (request.temperature, request.top_p, request.presence_penalty) == (1.0, 1.0, -1.0)



@pytest.mark.parametrize(
    ("parse", "body", "param"),
    [
        (completion, {"suffix": "END"}, "suffix"),
        (chat, {"modalities": ["text", "audio"]}, "modalities"),
        (chat, {"audio": {"voice": "alloy", "format": "mp3"}}, "modalities"),
    ],
)
def test_what_no_served_model_can_do_is_refused_rather_than_ignored(parse, body, param):
    assert refusal(parse, **body).param == param
