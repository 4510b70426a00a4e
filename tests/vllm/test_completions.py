"""Text completions on real vLLM (the tiny model) through a real EngineServer over gRPC.

The model's weights are random, so the tests compare the engine with itself (same seed, same
prompt, a reference run) rather than with expected words.
"""

from __future__ import annotations

import math

import grpc
import pytest

from switchyard.inference.v1 import inference_pb2
from tests.engine.engine_client import EngineClient, request
from tests.vllm.conftest import MODEL

pytestmark = pytest.mark.vllm

STOP = inference_pb2.FINISH_REASON_STOP
LENGTH = inference_pb2.FINISH_REASON_LENGTH
PROMPT = "Return a new list containing all items from the iterable in ascending order."


async def test_stream_has_one_finish_per_choice_then_usage(engine: EngineClient):
    result = await engine.generate(prompt=PROMPT, max_tokens=8, n=3, ignore_eos=True, seed=1)
    *deltas, finished = result.events
    assert finished.HasField("finished")
    finished_choices: list[int] = []
    for event in deltas:
        assert event.delta.index not in finished_choices, "a delta after its choice finished"
        if event.delta.finish_reason:
            finished_choices.append(event.delta.index)
    assert sorted(finished_choices) == [0, 1, 2]
    # Streamed as the tokens come (vLLM merges tokens the consumer has not picked up yet), not as
    # one block per choice.
    for index in range(3):
        assert sum(1 for event in deltas if event.delta.index == index) > 1
    assert all(choice.finish_reason == LENGTH for choice in result.choices.values())
    assert result.usage.completion_tokens == 24 == sum(len(c.token_ids) for c in result.choices.values())


async def test_prompt_tokens_count_the_tokenized_prompt(engine: EngineClient, backend):
    tokenizer = backend.llm.renderer.get_tokenizer()
    result = await engine.generate(prompt=PROMPT, max_tokens=1)
    assert result.usage.prompt_tokens == len(tokenizer.encode(PROMPT))


async def test_n_choices_are_sampled_independently(engine: EngineClient):
    result = await engine.generate(
        prompt=PROMPT, max_tokens=12, n=3, temperature=1.0, seed=5, ignore_eos=True
    )
    assert sorted(result.choices) == [0, 1, 2]
    assert len({tuple(choice.token_ids) for choice in result.choices.values()}) == 3


async def test_greedy_output_depends_only_on_the_prompt(engine: EngineClient):
    first = await engine.generate(prompt=PROMPT, max_tokens=16, temperature=0, ignore_eos=True)
    again = await engine.generate(prompt=PROMPT, max_tokens=16, temperature=0, ignore_eos=True)
    other = await engine.generate(prompt="A different prompt", max_tokens=16, temperature=0, ignore_eos=True)
    assert first.choices[0].token_ids == again.choices[0].token_ids
    assert first.choices[0].token_ids != other.choices[0].token_ids


async def test_seed_makes_sampling_repeatable(engine: EngineClient):
    seeded = [await engine.generate(prompt=PROMPT, max_tokens=16, seed=7, ignore_eos=True) for _ in range(2)]
    other_seed = await engine.generate(prompt=PROMPT, max_tokens=16, seed=8, ignore_eos=True)
    assert seeded[0].choices[0].token_ids == seeded[1].choices[0].token_ids
    assert other_seed.choices[0].token_ids != seeded[0].choices[0].token_ids


async def test_stop_string_ends_the_choice_before_it(engine: EngineClient):
    reference = (await engine.generate(prompt=PROMPT, max_tokens=24, seed=11, ignore_eos=True)).text
    # A stop string from the middle of what the same seed produces, first seen there.
    start = len(reference) // 2
    stop = reference[start : start + 4]
    start = reference.index(stop)

    stopped = await engine.generate(prompt=PROMPT, max_tokens=24, seed=11, ignore_eos=True, stop=[stop])
    assert stopped.text == reference[:start]
    assert stopped.choices[0].finish_reason == STOP
    assert stopped.choices[0].stop_reason == stop

    included = await engine.generate(
        prompt=PROMPT, max_tokens=24, seed=11, ignore_eos=True, stop=[stop], include_stop_str_in_output=True
    )
    assert included.text == reference[: start + len(stop)]


async def test_text_held_back_for_a_stop_string_still_comes_out(engine: EngineClient):
    """vLLM holds back len(stop) - 1 characters while a stop string may be starting; a choice that
    ends without matching must still deliver them."""
    reference = await engine.generate(prompt=PROMPT, max_tokens=24, seed=11, ignore_eos=True)
    unmatched = await engine.generate(
        prompt=PROMPT, max_tokens=24, seed=11, ignore_eos=True, stop=["\x00never appears\x00"]
    )
    assert unmatched.text == reference.text
    assert unmatched.choices[0].finish_reason == LENGTH


async def test_stop_token_id_ends_the_choice(engine: EngineClient):
    reference = await engine.generate(prompt=PROMPT, max_tokens=16, seed=3, ignore_eos=True)
    stop_token = reference.choices[0].token_ids[5]
    first_at = reference.choices[0].token_ids.index(stop_token)
    stopped = await engine.generate(
        prompt=PROMPT, max_tokens=16, seed=3, ignore_eos=True, stop_token_ids=[stop_token]
    )
    assert stopped.choices[0].finish_reason == STOP
    # The stop token is generated (and counted) but not shown.
    assert stopped.choices[0].token_ids == reference.choices[0].token_ids[: first_at + 1]


async def test_min_tokens_holds_off_the_stop_token(engine: EngineClient):
    reference = await engine.generate(prompt=PROMPT, max_tokens=12, seed=3, ignore_eos=True)
    first_token = reference.choices[0].token_ids[0]
    result = await engine.generate(
        prompt=PROMPT, max_tokens=12, seed=3, ignore_eos=True, stop_token_ids=[first_token], min_tokens=6
    )
    assert len(result.choices[0].token_ids) >= 6


async def test_logprobs_carry_the_chosen_token_and_ranked_alternatives(engine: EngineClient):
    result = await engine.generate(prompt=PROMPT, max_tokens=8, temperature=0, logprobs=3, ignore_eos=True)
    choice = result.choices[0]
    assert [entry.token_id for entry in choice.logprobs] == choice.token_ids
    for entry in choice.logprobs:
        alternatives = [alt.logprob for alt in entry.top_logprobs]
        assert len(alternatives) == 3
        assert alternatives == sorted(alternatives, reverse=True)
        assert entry.logprob < 0
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].token_id == entry.token_id
        assert math.isclose(entry.top_logprobs[0].logprob, entry.logprob, abs_tol=1e-4)


async def test_logit_bias_forces_a_token(engine: EngineClient):
    result = await engine.generate(
        prompt=PROMPT, max_tokens=4, logit_bias={42: 100.0}, ignore_eos=True, seed=2
    )
    assert result.choices[0].token_ids == [42, 42, 42, 42]


async def test_special_tokens_are_shown_only_when_asked(engine: EngineClient, backend):
    im_start = backend.llm.renderer.get_tokenizer().convert_tokens_to_ids("<|im_start|>")
    forced = {"prompt": PROMPT, "max_tokens": 2, "logit_bias": {im_start: 100.0}, "ignore_eos": True}
    hidden = await engine.generate(**forced)
    shown = await engine.generate(**forced, skip_special_tokens=False)
    assert hidden.choices[0].token_ids == shown.choices[0].token_ids == [im_start, im_start]
    assert hidden.text == ""
    assert shown.text == "<|im_start|><|im_start|>"


async def test_echo_with_logprobs_scores_the_prompt(engine: EngineClient, backend):
    tokenizer = backend.llm.renderer.get_tokenizer()
    prompt_ids = tokenizer.encode(PROMPT)
    result = await engine.generate(prompt=PROMPT, max_tokens=0, echo=True, logprobs=2)
    choice = result.choices[0]
    assert choice.text == PROMPT
    assert [entry.token_id for entry in choice.logprobs] == prompt_ids
    assert not choice.logprobs[0].HasField("logprob"), "the first token has no context"
    assert all(entry.HasField("logprob") and len(entry.top_logprobs) == 2 for entry in choice.logprobs[1:])
    assert choice.finish_reason == LENGTH
    assert choice.token_ids == []
    assert result.usage.completion_tokens == 0


async def test_echo_puts_the_prompt_before_the_completion(engine: EngineClient):
    plain = await engine.generate(prompt=PROMPT, max_tokens=6, seed=4, ignore_eos=True)
    echoed = await engine.generate(prompt=PROMPT, max_tokens=6, seed=4, ignore_eos=True, echo=True)
    assert echoed.text == PROMPT + plain.text
    assert echoed.usage.completion_tokens == plain.usage.completion_tokens == 6


async def test_best_of_returns_the_most_likely_candidates(engine: EngineClient):
    """best_of=4 samples the same four candidates as n=4 with that seed; the two returned are the
    two with the highest cumulative logprob among them."""
    candidates = await engine.generate(prompt=PROMPT, max_tokens=6, n=4, seed=9, logprobs=0, ignore_eos=True)
    ranked = sorted(
        candidates.choices.values(),
        key=lambda choice: sum(entry.logprob for entry in choice.logprobs),
        reverse=True,
    )
    best = await engine.generate(prompt=PROMPT, max_tokens=6, n=2, best_of=4, seed=9, ignore_eos=True)
    assert [best.choices[i].token_ids for i in (0, 1)] == [ranked[0].token_ids, ranked[1].token_ids]
    assert all(not choice.logprobs for choice in best.choices.values()), "logprobs only when asked"
    # Every candidate's tokens were generated, and are billed.
    assert best.usage.completion_tokens == 24


async def test_repeated_prompt_is_served_from_the_prefix_cache(engine: EngineClient):
    long_prompt = " ".join([PROMPT] * 12)
    await engine.generate(prompt=long_prompt, max_tokens=1)
    again = await engine.generate(prompt=long_prompt, max_tokens=1)
    assert again.usage.cached_tokens > 0
    assert again.usage.cached_tokens <= again.usage.prompt_tokens


async def test_prompt_longer_than_the_context_is_context_length_exceeded(engine: EngineClient):
    error = await engine.error(request(prompt="word " * 1200, max_tokens=4))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "CONTEXT_LENGTH_EXCEEDED"
    assert "1024" in error.message


async def test_prompt_plus_max_tokens_over_the_context_is_context_length_exceeded(engine: EngineClient):
    error = await engine.error(request(prompt=PROMPT, max_tokens=1020))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "CONTEXT_LENGTH_EXCEEDED"
    assert "1020 for the completion" in error.message


@pytest.mark.parametrize(
    ("sampling", "param"),
    [({"top_p": 1.5}, "top_p"), ({"logprobs": 21}, "logprobs"), ({"max_tokens": 0}, "max_tokens")],
)
async def test_values_vllm_refuses_are_invalid_argument(engine: EngineClient, sampling, param):
    error = await engine.error(request(prompt=PROMPT, **sampling))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_REQUEST"
    assert error.metadata.get("param") == param


async def test_unknown_model_is_not_found(engine: EngineClient):
    error = await engine.error(request(prompt=PROMPT, model="someone/else"))
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "MODEL_NOT_FOUND"


async def test_served_name_selects_the_base_model(engine: EngineClient):
    result = await engine.generate(prompt=PROMPT, model=MODEL, max_tokens=2)
    assert result.usage.completion_tokens >= 1
