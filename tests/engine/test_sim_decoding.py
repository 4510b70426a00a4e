"""ChoiceDecoder alone: stop strings across token boundaries, hold-back, bans, echo, forced output."""

from __future__ import annotations

from dataclasses import replace

from services.engine.backends.sim.decoding import ChoiceDecoder, EchoPrefix, RequestSampler
from services.engine.backends.sim.forced_output import ForcedOutput
from services.engine.backends.sim.language_model import context_of, language_model
from services.engine.backends.sim.plan import SamplingPlan
from services.engine.backends.sim.vocabulary import tokenize
from switchyard.inference.v1 import inference_pb2

MODEL = language_model(0)
GREEDY = SamplingPlan(
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    min_p=0.0,
    seed=None,
    logit_bias={},
    stop=(),
    stop_token_ids=frozenset(),
    include_stop_str_in_output=False,
    max_tokens=64,
    min_tokens=0,
    ignore_eos=True,
    logprobs=None,
    echo=False,
    n=1,
    best_of=1,
)
CONTEXT = context_of(tokenize("Once upon a time").token_ids)


def run(sampling: SamplingPlan, **kw) -> list[inference_pb2.TokenDelta]:
    decoder = ChoiceDecoder(0, RequestSampler(MODEL, sampling), CONTEXT, None, natural_length=1000, **kw)
    deltas = []
    while not decoder.done:
        deltas.append(decoder.step().delta)
    return deltas


def text_of(deltas) -> str:
    return "".join(delta.text for delta in deltas)


SCRIPT = ForcedOutput("alpha beta gamma delta")  # tokens: "alpha", " beta", " gamma", " delta"


def test_a_stop_string_spanning_tokens_is_matched_and_never_shown():
    deltas = run(replace(GREEDY, stop=("ta gam",)), forced=SCRIPT)
    assert text_of(deltas) == "alpha be"
    last = deltas[-1]
    assert (last.finish_reason, last.stop_reason) == (inference_pb2.FINISH_REASON_STOP, "ta gam")
    assert len(deltas) == 3, "generation stops at the token that completes the stop string"
    # Text that could be the start of "ta gam" is held back, not streamed.
    assert [delta.text for delta in deltas] == ["", "alpha", " be"]


def test_include_stop_str_in_output_keeps_the_stop_string():
    deltas = run(replace(GREEDY, stop=("ta gam",), include_stop_str_in_output=True), forced=SCRIPT)
    assert text_of(deltas) == "alpha beta gam"


def test_text_held_back_for_a_stop_string_that_never_comes_is_flushed_at_the_end():
    deltas = run(replace(GREEDY, stop=("delta!",)), forced=SCRIPT)
    assert text_of(deltas) == "alpha beta gamma delta"
    assert deltas[-1].finish_reason == inference_pb2.FINISH_REASON_STOP
    assert deltas[-1].stop_reason == ""


def test_max_tokens_cuts_forced_output_with_length():
    deltas = run(replace(GREEDY, max_tokens=2), forced=SCRIPT)
    assert text_of(deltas) == "alpha beta"
    assert deltas[-1].finish_reason == inference_pb2.FINISH_REASON_LENGTH


def test_stop_token_ids_are_banned_until_min_tokens():
    free = run(replace(GREEDY, max_tokens=3))
    first_token = free[0].token_ids[0]
    held = run(replace(GREEDY, max_tokens=3, min_tokens=1, stop_token_ids=frozenset({first_token})))
    assert held[0].token_ids[0] != first_token


def test_echo_with_max_tokens_zero_is_the_prompt_alone():
    deltas = run(replace(GREEDY, max_tokens=0), echo=EchoPrefix("Once upon a time", ()))
    assert [(d.text, list(d.token_ids), d.finish_reason) for d in deltas] == [
        ("Once upon a time", [], inference_pb2.FINISH_REASON_LENGTH)
    ]


def test_tool_call_deltas_carry_id_and_name_first_then_the_arguments():
    deltas = run(GREEDY, forced=ForcedOutput('{"q": ""}', tool_name="lookup"), tool_call_id="call_x")
    calls = [call for delta in deltas for call in delta.tool_calls]
    assert (calls[0].id, calls[0].function_name, calls[0].function_arguments) == ("call_x", "lookup", "")
    assert "".join(call.function_arguments for call in calls) == '{"q": ""}'
    assert deltas[-1].finish_reason == inference_pb2.FINISH_REASON_TOOL_CALLS
    assert not any(delta.text for delta in deltas)


def test_forced_tokens_have_logprob_zero_and_are_their_only_alternative():
    deltas = run(replace(GREEDY, logprobs=3), forced=SCRIPT)
    entries = [entry for delta in deltas for entry in delta.logprobs]
    assert [entry.token for entry in entries] == ["alpha", " beta", " gamma", " delta"]
    assert all(
        entry.logprob == 0.0 and [t.token for t in entry.top_logprobs] == [entry.token] for entry in entries
    )
