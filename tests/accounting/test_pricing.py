"""Request costs: exact decimal prices, rounded up once per request, in integer nanocredits."""

from __future__ import annotations

import pytest

from services.router.accounting.pricing import (
    Prices,
    credits_to_nanocredits,
    max_completion_tokens,
    nanocredits_to_credits,
)
from switchyard.inference.v1 import inference_pb2


def test_cost_is_tokens_times_price_per_million():
    prices = Prices(input_per_million=0.15, output_per_million=0.6)
    # 1000 * 0.15 / 1e6 + 500 * 0.6 / 1e6 credits = 0.00045 credits, exactly, despite 0.15 in binary.
    assert prices.cost(1000, 500) == 450_000
    assert nanocredits_to_credits(prices.cost(1000, 500)) == pytest.approx(0.00045)


def test_fractions_of_a_nanocredit_are_rounded_up_once_per_request():
    prices = Prices(input_per_million=0.0001, output_per_million=0.0)
    # 3 tokens * 0.1 nc = 0.3 nc -> 1; rounding per token would have charged 3.
    assert prices.cost(3, 0) == 1
    assert prices.cost(0, 0) == 0


def test_a_reservation_always_covers_the_settlement_of_fewer_tokens():
    prices = Prices(input_per_million=0.33, output_per_million=1.7)
    reserved = prices.cost(123, 456)
    assert all(prices.cost(123, used) <= reserved for used in range(457))


def test_factor_prices_cache_hits():
    prices = Prices(input_per_million=2.0, output_per_million=4.0)
    assert prices.cost(100, 100, factor=0.0) == 0
    assert prices.cost(100, 100, factor=0.5) == prices.cost(100, 100) // 2


def test_negative_prices_are_refused():
    with pytest.raises(ValueError):
        Prices(-1.0, 0.0)


def test_credits_convert_exactly():
    assert credits_to_nanocredits(0.1) == 100_000_000
    assert credits_to_nanocredits(1_000_000) == 10**15
    assert nanocredits_to_credits(1) == 1e-9


def test_max_completion_tokens_covers_every_generated_choice():
    sampling = inference_pb2.SamplingParams(max_tokens=50)
    assert max_completion_tokens(sampling, default_max_tokens=4000) == 50
    sampling.n = 3
    assert max_completion_tokens(sampling, default_max_tokens=4000) == 150
    sampling.best_of = 5  # five candidates are generated, and billed, to return three
    assert max_completion_tokens(sampling, default_max_tokens=4000) == 250
    unset = inference_pb2.SamplingParams()
    assert max_completion_tokens(unset, default_max_tokens=4000) == 4000
