"""What the router holds before a request runs, per model of its plan (services/router/billing.py)."""

from __future__ import annotations

from services.router.accounting import Prices
from services.router.accounting.pricing import total_cost
from services.router.billing import charges, cost_bound, plan_holds
from services.router.features import extract_features
from services.router.registry import ModelEntry, ResolvedModel
from tests.router.requests import prompt_input, sampling


def model(
    model_id: str, input_price: float, output_price: float, context_window: int = 4096
) -> ResolvedModel:
    entry = ModelEntry(
        id=model_id,
        provider=model_id.split("/")[0],
        quality=0.5,
        input_price=input_price,
        output_price=output_price,
        context_window=context_window,
        replicas=["127.0.0.1:1"],
    )
    return ResolvedModel(entry, entry.served_name)


# 40 characters: 10 prompt tokens at the router's 4 characters per token.
PROMPT = "x" * 40


def features(**sampling_fields):
    return extract_features(prompt_input(PROMPT, **sampling_fields), chars_per_token=4.0)


def test_the_bound_is_the_prompt_plus_every_token_the_request_may_generate():
    cheap = model("acme/cheap", 1000.0, 2000.0)
    generation = prompt_input(PROMPT, max_tokens=50, n=3)
    bound = cost_bound(cheap.entry, [features(max_tokens=50, n=3)], generation.sampling)
    prompt_tokens = bound.prompt_tokens
    assert bound.max_completion_tokens == 150
    assert bound.nanocredits == Prices(1000.0, 2000.0).cost(prompt_tokens, 150)


def test_without_max_tokens_the_bound_is_what_fits_in_the_context_window():
    small = model("acme/small", 1.0, 1.0, context_window=100)
    bound = cost_bound(small.entry, [features()], sampling())
    assert bound.prompt_tokens + bound.max_completion_tokens == 100


def test_a_plan_whose_first_model_is_the_dearest_is_held_once():
    dear, cheap = model("acme/dear", 10.0, 20.0), model("acme/cheap", 1.0, 2.0)
    options = plan_holds([dear, cheap], [features(max_tokens=10)], sampling(max_tokens=10))
    assert [covered for _, covered in options] == [(dear, cheap)]


def test_a_batch_is_bounded_by_every_prompt_it_holds():
    small = model("acme/small", 1.0, 1.0, context_window=100)
    short = extract_features(prompt_input("x" * 40), chars_per_token=4.0)
    long = extract_features(prompt_input("x" * 200), chars_per_token=4.0)
    bound = cost_bound(small.entry, [short, long], sampling(max_tokens=10, n=2))
    assert bound.prompt_tokens == 10 + 50
    assert bound.max_completion_tokens == 2 * 10 * 2, "max_tokens x n for each of the two prompts"


def test_a_dearer_fallback_is_held_for_first_then_dropped_if_the_balance_cannot_cover_it():
    cheap, dear, cheaper = (
        model("acme/cheap", 1.0, 2.0),
        model("acme/dear", 10.0, 20.0),
        model("x/min", 0.5, 1.0),
    )
    options = plan_holds([cheap, dear, cheaper], [features(max_tokens=10)], sampling(max_tokens=10))
    (whole_bound, whole), (first_bound, affordable) = options
    assert whole == (cheap, dear, cheaper) and affordable == (cheap, cheaper)
    assert whole_bound.prices == Prices(10.0, 20.0) and first_bound.prices == Prices(1.0, 2.0)
    assert whole_bound.nanocredits > first_bound.nanocredits


def test_an_outcome_served_by_two_models_costs_each_part_at_its_model():
    cheap, dear = model("acme/cheap", 1.0, 2.0), model("acme/dear", 10.0, 20.0)
    # A stream resumed on the dearer model: the prompt once, at the first, the tokens where made.
    billed = total_cost(charges([(cheap.entry, 10, 3), (dear.entry, 0, 5)]))
    assert billed == 10 * 1_000 + 3 * 2_000 + 5 * 20_000
