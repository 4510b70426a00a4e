"""Model choice as a table: a request, its difficulty and routing fields -> the model chosen.

The catalog, with the quality each preference needs at difficulty d (the default rules):
balanced 0.3 + 0.6 d, powerful 0.7 + 0.3 d, efficient 0.6 d; the cheapest model meeting the need wins.
"""

from __future__ import annotations

import textwrap

import grpc
import pytest

from services.common.errors import ContextLengthExceededError, ModelNotFoundError, NoEligibleModelError
from services.router.features import extract_features
from services.router.registry import parse_registry
from services.router.scoring import Score
from services.router.selection import Selection, select_models
from services.router.settings import SelectionSettings
from tests.router.requests import chat_input, generate_request, prompt_input

CATALOG = parse_registry(
    textwrap.dedent(
        """
        models:
          - id: acme/nano
            provider: acme
            quality: 0.25
            input_price: 0.05
            output_price: 0.1
            context_window: 4096
            capabilities: {tools: false, json_schema: false, max_logprobs: 5}
            replicas: ["a:1"]
          - id: acme/small
            provider: acme
            aliases: [small]
            quality: 0.45
            input_price: 0.2
            output_price: 0.4
            context_window: 16384
            capabilities: {tools: true, json_schema: true}
            replicas: ["a:2"]
          - id: acme/large
            provider: acme
            quality: 0.9
            input_price: 3
            output_price: 6
            context_window: 131072
            capabilities: {tools: true, json_schema: true, vision: true}
            replicas: ["a:3"]
          - id: globex/medium
            provider: globex
            quality: 0.7
            input_price: 0.8
            output_price: 1.6
            context_window: 32768
            capabilities: {tools: true, json_schema: false, vision: true, max_logprobs: 5}
            replicas: ["g:1"]
        """
    ),
    environ={},
)
HELLO = chat_input(("user", "hello"))


def choose(generation=HELLO, *, difficulty: float = 0.1, **routing) -> Selection:
    request = generate_request(generation, **routing)
    return select_models(
        CATALOG,
        extract_features(request.input, chars_per_token=4.0),
        Score(difficulty=difficulty, category="chat"),
        model=request.model,
        routing=request.routing,
        settings=SelectionSettings(),
    )


def chosen(generation=HELLO, **kw) -> str:
    return choose(generation, **kw).plan[0].entry.id


@pytest.mark.parametrize(
    ("preference", "difficulty", "expected"),
    [
        ("balanced", 0.1, "acme/small"),  # needs 0.36
        ("balanced", 0.6, "globex/medium"),  # needs 0.66
        ("balanced", 0.9, "acme/large"),  # needs 0.84
        ("efficient", 0.1, "acme/nano"),  # needs 0.06
        ("efficient", 0.6, "acme/small"),  # needs 0.36
        ("efficient", 0.9, "globex/medium"),  # needs 0.54
        ("powerful", 0.0, "globex/medium"),  # needs 0.70
        ("powerful", 0.1, "acme/large"),  # needs 0.73
        ("powerful", 1.0, "acme/large"),  # needs 1.0: nobody does, the best quality wins
    ],
)
def test_preference_and_difficulty(preference, difficulty, expected):
    assert chosen(preference=preference, difficulty=difficulty) == expected


@pytest.mark.parametrize(
    ("case", "generation", "routing", "expected"),
    [
        ("excluded provider", HELLO, {"exclude_providers": ["acme"]}, "globex/medium"),
        ("excluded model", HELLO, {"exclude_models": ["acme/small"]}, "globex/medium"),
        ("excluded by alias", HELLO, {"exclude_models": ["small"]}, "globex/medium"),
        ("unknown exclusions are harmless", HELLO, {"exclude_models": ["nobody/nothing"]}, "acme/small"),
        ("tools", chat_input(("user", "hi"), tools=["f"]), {"preference": "efficient"}, "acme/small"),
        ("json schema", chat_input(("user", "hi"), json_schema=True), {"difficulty": 0.6}, "acme/large"),
        ("vision", chat_input(("user", "hi"), image=True), {"preference": "efficient"}, "globex/medium"),
        ("logprobs", chat_input(("user", "hi"), logprobs=10), {"preference": "efficient"}, "acme/small"),
        ("long prompt", prompt_input("word " * 16_000), {"preference": "efficient"}, "globex/medium"),
        ("long output", prompt_input("hi", max_tokens=40_000), {"preference": "efficient"}, "acme/large"),
        ("models list", HELLO, {"models": ["acme/nano", "globex/medium"]}, "globex/medium"),
        (
            "models list, none good enough",
            HELLO,
            {"models": ["acme/nano", "small"], "preference": "powerful"},
            "acme/small",
        ),
    ],
)
def test_constraints(case, generation, routing, expected):
    assert chosen(generation, **routing) == expected, case


@pytest.mark.parametrize(
    ("routing", "expected"),
    [
        ({"model": "acme/nano", "difficulty": 0.9}, "acme/nano"),
        ({"model": "acme/nano", "exclude_providers": ["acme"]}, "acme/nano"),
        ({"models": ["acme/nano"], "exclude_models": ["acme/nano"]}, "acme/nano"),
        ({"model": "small"}, "acme/small"),
        ({"model": "large"}, "acme/large"),  # the unambiguous short name
        ({"model": "auto"}, "acme/small"),  # "auto" lets the router choose
    ],
)
def test_an_explicit_model_wins(routing, expected):
    selection = choose(**routing)
    assert selection.plan[0].entry.id == expected
    assert selection.explicit == (routing.get("model") != "auto")


def test_an_explicit_model_is_not_refused_on_the_router_s_token_estimate():
    # The engine counts tokens exactly and answers CONTEXT_LENGTH_EXCEEDED itself if it must.
    assert chosen(prompt_input("word " * 16_000), model="acme/nano") == "acme/nano"


def test_an_explicit_model_is_refused_at_once_for_a_prompt_it_could_never_hold():
    # acme/nano's 4096 tokens hold at most 4096 x 32 characters, however they are tokenized.
    hopeless = prompt_input("word " * 28_000)
    with pytest.raises(ContextLengthExceededError) as caught:
        choose(hopeless, model="acme/nano")
    assert caught.value.metadata["param"] == "prompt" and "4096" in caught.value.message
    # A fallback with room still serves it.
    assert chosen(hopeless, model="acme/nano", fallback_models=["acme/large"]) == "acme/large"


@pytest.mark.parametrize(
    "routing",
    [
        {"model": "nobody/nothing"},
        {"models": ["acme/nano", "nobody/nothing"]},
        {"model": "acme/nano", "models": ["nobody/nothing"]},
    ],
)
def test_unknown_names_are_not_found(routing):
    with pytest.raises(ModelNotFoundError) as caught:
        choose(**routing)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_an_unknown_fallback_is_skipped_and_does_not_fail_a_request_its_first_choice_serves():
    selection = choose(model="acme/nano", fallback_models=["nobody/nothing", "acme/large"])
    assert [model.entry.id for model in selection.plan] == ["acme/nano", "acme/large"]


def test_nothing_eligible_says_which_constraint_excluded_what():
    with pytest.raises(NoEligibleModelError) as caught:
        choose(
            chat_input(("user", "hi"), tools=["f"]),
            exclude_providers=["globex"],
            exclude_models=["small", "acme/large"],
        )
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "acme/nano: does not support tools" in error.message
    assert "acme/small: excluded by exclude_models" in error.message
    assert "globex/medium: provider 'globex' excluded by exclude_providers" in error.message
    assert error.metadata["excluded"] in error.message


def test_an_explicit_model_that_cannot_serve_the_request_is_refused():
    with pytest.raises(NoEligibleModelError, match="does not support tools"):
        choose(chat_input(("user", "hi"), tools=["f"]), model="acme/nano")


def test_the_plan_is_the_choice_then_fallbacks_in_order_then_the_other_candidates():
    selection = choose(fallback_models=["acme/large", "acme/nano"])
    assert [m.entry.id for m in selection.plan] == ["acme/small", "acme/large", "acme/nano", "globex/medium"]


def test_fallbacks_ignore_exclusions_but_not_capabilities():
    excluded = choose(exclude_models=["acme/nano"], fallback_models=["acme/nano"])
    assert "acme/nano" in [m.entry.id for m in excluded.plan]
    incapable = choose(chat_input(("user", "hi"), tools=["f"]), fallback_models=["acme/nano"])
    assert "acme/nano" not in [m.entry.id for m in incapable.plan]


def test_an_explicit_model_falls_back_only_to_the_fallbacks():
    selection = choose(model="acme/nano", fallback_models=["globex/medium"])
    assert [m.entry.id for m in selection.plan] == ["acme/nano", "globex/medium"]


def test_candidates_are_ranked_with_scores_and_the_ineligible_last_with_reasons():
    selection = choose(chat_input(("user", "hi"), tools=["f"]), difficulty=0.1)
    ids = [c.entry.id for c in selection.candidates]
    assert ids == ["acme/small", "globex/medium", "acme/large", "acme/nano"]
    scores = [c.score for c in selection.candidates]
    assert scores == sorted(scores, reverse=True)
    assert all(c.score >= 0.5 for c in selection.candidates[:3]), "all three meet the 0.36 needed"
    nano = selection.candidates[-1]
    assert (nano.eligible, nano.score, nano.excluded_reason) == (False, 0.0, "does not support tools")
    assert selection.candidates[0].estimated_cost < selection.candidates[1].estimated_cost


def test_thresholds_are_configuration():
    strict = SelectionSettings(balanced_base=0.8, balanced_per_difficulty=0.0)
    request = generate_request(HELLO)
    selection = select_models(
        CATALOG,
        extract_features(request.input, 4.0),
        Score(0.1, "chat"),
        model="",
        routing=request.routing,
        settings=strict,
    )
    assert selection.plan[0].entry.id == "acme/large"
