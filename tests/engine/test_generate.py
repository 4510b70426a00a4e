"""Generate on a real EngineServer (sim backend) over gRPC: what a caller sees for each sampling field."""

from __future__ import annotations

import json
import math

import jsonschema
import pytest

from services.engine.backends.sim.vocabulary import EOS_TOKEN_ID, VOCAB_SIZE, tokenize
from switchyard.inference.v1 import inference_pb2
from tests.engine.engine_client import MODEL, EngineClient, request, running_engine

STOP = inference_pb2.FINISH_REASON_STOP
LENGTH = inference_pb2.FINISH_REASON_LENGTH
TOOL_CALLS = inference_pb2.FINISH_REASON_TOOL_CALLS


async def test_stream_follows_the_documented_lifecycle(engine: EngineClient):
    result = await engine.generate(max_tokens=12, n=3, temperature=0.8)
    *deltas, finished = result.events
    assert finished.HasField("finished")
    assert all(event.HasField("delta") for event in deltas)
    finished_choices: set[int] = set()
    for event in deltas:
        index = event.delta.index
        assert index not in finished_choices, "a delta after its choice finished"
        if event.delta.finish_reason:
            finished_choices.add(index)
    assert finished_choices == {0, 1, 2}
    assert result.usage.prompt_tokens == len(tokenize("Once upon a time").token_ids)
    assert result.usage.completion_tokens == sum(len(c.token_ids) for c in result.choices.values()) == 36


async def test_each_of_n_choices_has_its_own_index_and_text(engine: EngineClient):
    result = await engine.generate(max_tokens=16, n=3, temperature=1.0)
    assert sorted(result.choices) == [0, 1, 2]
    assert len({choice.text for choice in result.choices.values()}) == 3


async def test_greedy_output_depends_only_on_the_prompt(engine: EngineClient):
    first = await engine.generate(prompt="The river", max_tokens=24, temperature=0)
    again = await engine.generate(prompt="The river", max_tokens=24, temperature=0)
    other = await engine.generate(prompt="The mountain", max_tokens=24, temperature=0)
    assert first.text == again.text
    assert first.text != other.text
    assert len(first.text.split()) >= 12, "real-looking words"


async def test_seed_makes_sampling_repeatable(engine: EngineClient):
    seeded = [await engine.generate(max_tokens=24, temperature=1.0, seed=7) for _ in range(2)]
    other_seed = await engine.generate(max_tokens=24, temperature=1.0, seed=8)
    unseeded = [await engine.generate(max_tokens=24, temperature=1.0) for _ in range(2)]
    assert seeded[0].text == seeded[1].text
    assert other_seed.text != seeded[0].text
    assert unseeded[0].text != unseeded[1].text


async def test_stop_string_ends_the_choice_before_it(engine: EngineClient):
    free = await engine.generate(max_tokens=30, temperature=0)
    stop = free.text.split()[5]
    stopped = await engine.generate(max_tokens=30, temperature=0, stop=["never appears", stop])
    choice = stopped.choices[0]
    assert (choice.finish_reason, choice.stop_reason) == (STOP, stop)
    assert stop not in choice.text
    assert free.text.startswith(choice.text)
    assert free.text[len(choice.text) :].startswith(stop)

    included = await engine.generate(
        max_tokens=30, temperature=0, stop=[stop], include_stop_str_in_output=True
    )
    assert included.text == choice.text + stop


async def test_stop_token_id_ends_the_choice_with_its_text(engine: EngineClient):
    free = await engine.generate(max_tokens=30, temperature=0)
    stop_token = free.choices[0].token_ids[4]
    stopped = await engine.generate(max_tokens=30, temperature=0, stop_token_ids=[stop_token])
    choice = stopped.choices[0]
    assert choice.finish_reason == STOP
    assert choice.token_ids[-1] == stop_token
    assert choice.token_ids == free.choices[0].token_ids[: len(choice.token_ids)]


async def test_max_tokens_ends_with_length(engine: EngineClient):
    result = await engine.generate(max_tokens=7, temperature=1.0)
    assert result.choices[0].finish_reason == LENGTH
    assert result.usage.completion_tokens == 7


async def test_choices_end_with_eos_after_a_natural_length_unless_ignore_eos():
    async with running_engine(sim={"response_length_min": 5, "response_length_max": 9}) as engine:
        natural = await engine.generate(max_tokens=50, temperature=0)
        choice = natural.choices[0]
        assert (choice.finish_reason, choice.stop_reason) == (STOP, "")
        assert choice.token_ids[-1] == EOS_TOKEN_ID
        assert 6 <= natural.usage.completion_tokens <= 10  # the words, then EOS

        ignoring = await engine.generate(max_tokens=50, temperature=0, ignore_eos=True)
        assert ignoring.choices[0].finish_reason == LENGTH
        assert ignoring.usage.completion_tokens == 50


async def test_min_tokens_holds_off_eos_and_stop_strings():
    async with running_engine(sim={"response_length_min": 2, "response_length_max": 2}) as engine:
        result = await engine.generate(max_tokens=50, temperature=0, min_tokens=20)
        assert result.choices[0].finish_reason == STOP
        assert result.usage.completion_tokens == 21  # 20 words, then EOS as soon as it is allowed

        early_word = result.text.split()[0]
        held = await engine.generate(max_tokens=50, temperature=0, min_tokens=20, stop=[early_word])
        assert held.text.split()[:1] == [early_word], "the stop string was matched before min_tokens"


async def test_logit_bias_forces_and_bans_tokens(engine: EngineClient):
    forced_token = tokenize(" river").token_ids[0]
    forced = await engine.generate(max_tokens=6, temperature=1.0, logit_bias={forced_token: 100})
    assert forced.choices[0].token_ids == [forced_token] * 6
    assert forced.text == " river" * 6

    free = await engine.generate(max_tokens=12, temperature=0)
    banned_token = free.choices[0].token_ids[0]
    banned = await engine.generate(max_tokens=12, temperature=0, logit_bias={banned_token: -100})
    assert banned_token not in banned.choices[0].token_ids


async def test_logprobs_rank_the_greedy_token_first_in_a_normalised_distribution(engine: EngineClient):
    result = await engine.generate(max_tokens=10, temperature=0, logprobs=5)
    choice = result.choices[0]
    assert len(choice.logprobs) == len(choice.token_ids) == 10
    assert "".join(entry.token for entry in choice.logprobs) == choice.text
    for entry, token_id in zip(choice.logprobs, choice.token_ids, strict=True):
        assert entry.token_id == token_id
        alternatives = [top.logprob for top in entry.top_logprobs]
        assert len(alternatives) == 5
        assert entry.top_logprobs[0].token_id == token_id
        assert entry.logprob == pytest.approx(alternatives[0])
        assert alternatives == sorted(alternatives, reverse=True)
        assert 0 < sum(math.exp(lp) for lp in alternatives) <= 1.0 + 1e-6
        assert entry.bytes == entry.token.encode()


async def test_logprobs_zero_gives_the_chosen_token_only(engine: EngineClient):
    result = await engine.generate(max_tokens=4, temperature=1.0, seed=1, logprobs=0)
    assert [len(entry.top_logprobs) for entry in result.choices[0].logprobs] == [0, 0, 0, 0]
    assert all(entry.logprob < 0 for entry in result.choices[0].logprobs)


async def test_echo_prepends_the_prompt_and_its_logprobs(engine: EngineClient):
    prompt = "The quick brown fox"
    plain = await engine.generate(prompt=prompt, max_tokens=4, temperature=0)
    echoed = await engine.generate(prompt=prompt, max_tokens=4, temperature=0, echo=True, logprobs=2)
    choice = echoed.choices[0]
    assert choice.text == prompt + plain.text
    first_delta = echoed.events[0].delta
    assert first_delta.text.startswith(prompt)
    prompt_tokens = echoed.usage.prompt_tokens
    prompt_entries, completion_entries = choice.logprobs[:prompt_tokens], choice.logprobs[prompt_tokens:]
    assert "".join(entry.token for entry in prompt_entries) == prompt
    assert not prompt_entries[0].HasField("logprob"), "the first prompt token has no context"
    assert all(entry.HasField("logprob") and len(entry.top_logprobs) == 2 for entry in prompt_entries[1:])
    assert len(completion_entries) == 4

    only_prompt = await engine.generate(prompt=prompt, max_tokens=0, echo=True)
    assert only_prompt.text == prompt
    assert only_prompt.choices[0].finish_reason == LENGTH
    assert only_prompt.usage.completion_tokens == 0


async def test_best_of_returns_the_n_most_likely_of_its_candidates(engine: EngineClient):
    params = {"max_tokens": 8, "temperature": 1.0, "seed": 11, "logprobs": 0}
    candidates = await engine.generate(n=5, **params)
    best = await engine.generate(n=2, best_of=5, **params)

    def score(choice) -> float:
        return sum(entry.logprob for entry in choice.logprobs)

    ranked = sorted(candidates.choices.values(), key=score, reverse=True)
    assert sorted(best.choices) == [0, 1]
    assert [best.choices[i].text for i in (0, 1)] == [ranked[0].text, ranked[1].text]
    assert best.usage.completion_tokens == 5 * 8, "every candidate was generated"


async def test_token_prompt_is_accepted(engine: EngineClient):
    prompt_ids = list(tokenize("Once upon a time").token_ids)
    generate_request = request(None, max_tokens=5, temperature=0)
    generate_request.input.tokens.token_ids.extend(prompt_ids)
    by_ids = await engine.generate(generate_request)
    assert by_ids.usage.prompt_tokens == len(prompt_ids)
    assert by_ids.text == (await engine.generate(max_tokens=5, temperature=0)).text

    generate_request.input.tokens.token_ids.append(VOCAB_SIZE)
    error = await engine.error(generate_request)
    assert (error.reason, error.metadata["param"]) == ("INVALID_REQUEST", "prompt")


async def test_the_served_model_name_is_accepted_and_others_are_not_found(engine: EngineClient):
    assert (await engine.generate(model=MODEL, max_tokens=2)).usage.completion_tokens == 2
    error = await engine.error(request(model="someone/else", max_tokens=2))
    assert (error.code.name, error.reason) == ("NOT_FOUND", "MODEL_NOT_FOUND")


# --- chat ---------------------------------------------------------------------------------------

WEATHER_TOOL = inference_pb2.Tool(
    name="get_weather",
    parameters_json=json.dumps(
        {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "days", "unit"],
        }
    ),
)
TIME_TOOL = inference_pb2.Tool(name="get_time", parameters_json='{"type": "object", "properties": {}}')


def chat(text: str, **kw) -> inference_pb2.Chat:
    return inference_pb2.Chat(messages=[inference_pb2.ChatMessage(role="user", content=text)], **kw)


async def test_named_tool_choice_streams_a_tool_call(engine: EngineClient):
    result = await engine.generate(
        request(chat=chat("Weather in Oslo?", tools=[TIME_TOOL, WEATHER_TOOL], tool_choice="get_weather"))
    )
    choice = result.choices[0]
    assert choice.finish_reason == TOOL_CALLS
    assert choice.text == ""
    first, *rest = choice.tool_calls
    assert first.id.startswith("call_") and first.function_name == "get_weather"
    # Pieces after the first continue the call (how many there are depends on how the stream batched).
    assert all(not piece.HasField("id") and not piece.HasField("function_name") for piece in rest)
    arguments = json.loads("".join(piece.function_arguments for piece in choice.tool_calls))
    jsonschema.validate(arguments, json.loads(WEATHER_TOOL.parameters_json))
    assert arguments == {"city": "", "days": 1, "unit": "celsius"}


@pytest.mark.parametrize(
    ("question", "tool_choice", "called"),
    [
        ("Please call get_time now", "auto", "get_time"),
        ("Please call get_time now", None, "get_time"),  # auto is the default with tools
        ("How are you?", "auto", None),
        ("How are you?", "required", "get_time"),  # the first tool
        ("Use get_weather", "required", "get_weather"),
        ("Please call get_time now", "none", None),
    ],
)
async def test_tool_choice_auto_required_and_none(engine: EngineClient, question, tool_choice, called):
    kw = {"tool_choice": tool_choice} if tool_choice else {}
    result = await engine.generate(
        request(chat=chat(question, tools=[TIME_TOOL, WEATHER_TOOL], **kw), max_tokens=64)
    )
    choice = result.choices[0]
    if called is None:
        assert not choice.tool_calls and choice.text
    else:
        assert (choice.finish_reason, choice.tool_calls[0].function_name) == (TOOL_CALLS, called)


async def test_unknown_tool_choice_is_an_invalid_request(engine: EngineClient):
    error = await engine.error(request(chat=chat("hi", tools=[TIME_TOOL], tool_choice="launch_rocket")))
    assert (error.code.name, error.reason, error.metadata["param"]) == (
        "INVALID_ARGUMENT",
        "INVALID_REQUEST",
        "tool_choice",
    )


async def test_json_schema_response_format_gives_a_valid_instance(engine: EngineClient):
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 3},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "when": {"type": "string", "format": "date"},
            "score": {"type": "number", "exclusiveMinimum": 0},
        },
        "required": ["title", "tags", "when", "score"],
    }
    response_format = inference_pb2.ResponseFormat(
        type=inference_pb2.ResponseFormat.TYPE_JSON_SCHEMA, json_schema=json.dumps(schema), schema_name="doc"
    )
    result = await engine.generate(
        request(chat=chat("Describe it", response_format=response_format), temperature=1.0)
    )
    assert result.choices[0].finish_reason == STOP
    jsonschema.validate(json.loads(result.text), schema, format_checker=jsonschema.FormatChecker())

    json_object = inference_pb2.ResponseFormat(type=inference_pb2.ResponseFormat.TYPE_JSON_OBJECT)
    result = await engine.generate(request(chat=chat("Describe it", response_format=json_object)))
    assert isinstance(json.loads(result.text), dict)


async def test_structured_output_cut_by_max_tokens_ends_with_length(engine: EngineClient):
    result = await engine.generate(
        request(chat=chat("hi", tools=[WEATHER_TOOL], tool_choice="get_weather"), max_tokens=3)
    )
    assert result.choices[0].finish_reason == LENGTH
    assert result.usage.completion_tokens == 3


async def test_chat_accepts_every_role_content_parts_and_tool_results(engine: EngineClient):
    conversation = inference_pb2.Chat(
        messages=[
            inference_pb2.ChatMessage(role="system", content="Be brief."),
            inference_pb2.ChatMessage(role="developer", content="Answer in words."),
            inference_pb2.ChatMessage(
                role="user",
                parts=[
                    inference_pb2.ContentPart(text="What is this?"),
                    inference_pb2.ContentPart(
                        image_url=inference_pb2.ImageUrl(url="data:image/png;base64,AAAA")
                    ),
                ],
            ),
            inference_pb2.ChatMessage(
                role="assistant",
                tool_calls=[
                    inference_pb2.ToolCall(id="call_1", function_name="get_time", function_arguments="{}")
                ],
            ),
            inference_pb2.ChatMessage(role="tool", content='{"time": "noon"}', tool_call_id="call_1"),
        ],
        tools=[TIME_TOOL],
        tool_choice="none",
    )
    result = await engine.generate(request(chat=conversation, max_tokens=5))
    assert result.usage.prompt_tokens > 20
    assert result.choices[0].finish_reason == LENGTH and result.text


async def test_continue_final_message_continues_the_assistant_text(engine: EngineClient):
    partial = inference_pb2.Chat(
        messages=[
            inference_pb2.ChatMessage(role="user", content="Tell me a story"),
            inference_pb2.ChatMessage(role="assistant", content="Once upon"),
        ],
        chat_template_kwargs_json='{"continue_final_message": true, "add_generation_prompt": false}',
    )
    continued = await engine.generate(request(chat=partial, max_tokens=5, temperature=0))
    # Continuing is generating from the flattened conversation, the assistant's turn left open.
    flattened = await engine.generate(
        prompt="user: Tell me a story\nassistant: Once upon", max_tokens=5, temperature=0
    )
    assert continued.usage.prompt_tokens == flattened.usage.prompt_tokens
    assert continued.text == flattened.text


# --- errors -------------------------------------------------------------------------------------


async def test_prompt_longer_than_the_context_is_context_length_exceeded():
    async with running_engine(sim={"max_model_len": 64}) as engine:
        error = await engine.error(request("word " * 65, max_tokens=1))
        assert (error.code.name, error.reason, error.metadata["param"]) == (
            "INVALID_ARGUMENT",
            "CONTEXT_LENGTH_EXCEEDED",
            "prompt",
        )
        assert "64" in error.message

        error = await engine.error(request("word " * 40, max_tokens=30))
        assert (error.reason, error.metadata["param"]) == ("CONTEXT_LENGTH_EXCEEDED", "max_tokens")

        fits = await engine.generate(request("word " * 40, ignore_eos=True))
        assert fits.usage.completion_tokens == 64 - fits.usage.prompt_tokens, (
            "no max_tokens: what the context leaves"
        )


@pytest.mark.parametrize(
    ("sampling", "param"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"logprobs": 21}, "logprobs"),
        ({"n": 3, "best_of": 2}, "best_of"),
        ({"logit_bias": {VOCAB_SIZE: 1}}, "logit_bias"),
        ({"logit_bias": {5: 101}}, "logit_bias"),
        ({"max_tokens": 5, "min_tokens": 6}, "min_tokens"),
        ({"stop": [""]}, "stop"),
        ({"presence_penalty": 3}, "presence_penalty"),
    ],
)
async def test_invalid_sampling_is_an_invalid_request_naming_the_field(engine: EngineClient, sampling, param):
    error = await engine.error(request(**sampling))
    assert (error.code.name, error.reason, error.metadata["param"]) == (
        "INVALID_ARGUMENT",
        "INVALID_REQUEST",
        param,
    )


async def test_a_prompt_of_megabytes_is_refused_as_too_long_having_read_only_what_fits():
    async with running_engine(sim={"max_model_len": 64}) as engine:
        error = await engine.error(request("word " * 2_000_000, max_tokens=1))
        assert error.reason == "CONTEXT_LENGTH_EXCEEDED" and "more than 64 tokens" in error.message


def test_tokenizing_under_a_limit_reads_no_further_than_the_limit():
    assert tokenize("one two three four", limit=2).pieces == ("one", " two")
    assert tokenize("one two", limit=5) == tokenize("one two")
