"""Money arithmetic: credits as integer nanocredits, prices per million tokens, request costs.

Balances and charges are integers (1 credit = 10^9 nanocredits) so that sums are exact on SQLite
and PostgreSQL alike: "balance = top-ups - settled charges" must hold to the last unit. Prices are
decimals as configured (credits per million tokens); a cost is rounded up to a whole nanocredit once
per request, so a reservation is never smaller than the settlement of the same token counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal

from switchyard.inference.v1 import inference_pb2

NANOCREDITS_PER_CREDIT = 1_000_000_000
# Per-million-token prices become nanocredits per token: x credits / 1e6 tokens = x * 1e3 nc/token.
_NANOCREDITS_PER_TOKEN_PER_PRICE_UNIT = Decimal(NANOCREDITS_PER_CREDIT) / Decimal(1_000_000)


def _decimal(value: float) -> Decimal:
    # repr() is the shortest string that round-trips the float: 0.15 stays 0.15, not 0.1499999...
    return Decimal(repr(value))


def credits_to_nanocredits(credits: float) -> int:
    return int((_decimal(credits) * NANOCREDITS_PER_CREDIT).to_integral_value(ROUND_HALF_EVEN))


def nanocredits_to_credits(nanocredits: int) -> float:
    return nanocredits / NANOCREDITS_PER_CREDIT


@dataclass(frozen=True, slots=True)
class Prices:
    """A model's prices in credits per million tokens (the registry's input_price/output_price)."""

    input_per_million: float
    output_per_million: float
    _input_per_token: Decimal = field(init=False, repr=False, compare=False)
    _output_per_token: Decimal = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.input_per_million < 0 or self.output_per_million < 0:
            raise ValueError("prices cannot be negative")
        object.__setattr__(
            self, "_input_per_token", _decimal(self.input_per_million) * _NANOCREDITS_PER_TOKEN_PER_PRICE_UNIT
        )
        object.__setattr__(
            self,
            "_output_per_token",
            _decimal(self.output_per_million) * _NANOCREDITS_PER_TOKEN_PER_PRICE_UNIT,
        )

    def cost(self, prompt_tokens: int, completion_tokens: int, factor: float = 1.0) -> int:
        """Nanocredits for these token counts, times `factor` (a cache hit's price), rounded up."""
        return total_cost([Charge(self, prompt_tokens, completion_tokens)], factor)

    def _exact(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        return prompt_tokens * self._input_per_token + completion_tokens * self._output_per_token


FREE = Prices(0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Charge:
    """Tokens billed at one model's prices. A request that more than one model served (a stream
    resumed on another model) is billed as one charge per model."""

    prices: Prices
    prompt_tokens: int
    completion_tokens: int


def total_cost(charges: Iterable[Charge], factor: float = 1.0) -> int:
    """Nanocredits for all the charges of one request, times `factor`, rounded up once."""
    exact = sum((c.prices._exact(c.prompt_tokens, c.completion_tokens) for c in charges), Decimal(0))
    if factor != 1.0:
        exact *= _decimal(factor)
    return int(exact.to_integral_value(ROUND_CEILING))


def max_completion_tokens(sampling: inference_pb2.SamplingParams, default_max_tokens: int) -> int:
    """The most completion tokens a request can produce over all its choices: what a reservation
    must cover. `default_max_tokens` stands in for an unset max_tokens (the room left in the
    model's context window)."""
    per_choice = sampling.max_tokens if sampling.HasField("max_tokens") else default_max_tokens
    # best_of candidates are all generated (and billed) even though only n are returned.
    choices = max(sampling.n or 1, sampling.best_of if sampling.HasField("best_of") else 0)
    return per_choice * choices
