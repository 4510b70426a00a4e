"""What a routed request may cost before it runs and what it cost after, in the terms of the
accounting layer (services/router/accounting/pricing.py). Pure: registry entries and token counts in.

The hold. Before dispatch the router holds the most the request can cost: prompt tokens (the
router's estimate) at the input price plus the most it may generate (max_tokens, or the room left
in the model's context window, times n or best_of) at the output price; for a batch of prompts
(GenerateRequest.batch), the sum of that over the prompts. A request's plan may fall
back to other models, so the hold is computed for every model of the plan:
- the router first holds what the dearest model of the plan can cost, so that any fallback is
  covered and the settlement never exceeds the hold;
- when the key's balance cannot cover that, it holds what the first-choice model can cost, and the
  plan keeps only the models that cannot cost more (fallbacks to dearer models are dropped rather
  than refusing a request the key can pay for);
- when the balance cannot cover even that, the request is refused (429 insufficient_quota).
A prompt the engine counts longer than the router's estimate can still bill a little more than was
held; the settlement charges it all the same (the ledger stays exact).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from services.router.accounting import Charge, Prices, max_completion_tokens
from services.router.features import RequestFeatures
from services.router.registry import ModelEntry, ResolvedModel
from switchyard.inference.v1 import inference_pb2


@functools.lru_cache(maxsize=4096)
def _prices(input_per_million: float, output_per_million: float) -> Prices:
    return Prices(input_per_million, output_per_million)


def model_prices(entry: ModelEntry) -> Prices:
    """The registry's prices (credits per million tokens) as the accounting layer takes them."""
    return _prices(entry.input_price, entry.output_price)


@dataclass(frozen=True, slots=True)
class CostBound:
    """The most a request can cost on one model."""

    prices: Prices
    prompt_tokens: int
    max_completion_tokens: int
    nanocredits: int


def cost_bound(
    entry: ModelEntry, prompts: Sequence[RequestFeatures], sampling: inference_pb2.SamplingParams
) -> CostBound:
    """The most `prompts` (one, or each prompt of a batch, all with `sampling`) can cost on `entry`."""
    prompt_tokens = completion = 0
    for features in prompts:
        room = max(1, entry.context_window - features.prompt_tokens)
        prompt_tokens += features.prompt_tokens
        completion += max_completion_tokens(sampling, room)
    prices = model_prices(entry)
    return CostBound(prices, prompt_tokens, completion, prices.cost(prompt_tokens, completion))


def plan_holds(
    plan: Sequence[ResolvedModel],
    prompts: Sequence[RequestFeatures],
    sampling: inference_pb2.SamplingParams,
) -> list[tuple[CostBound, tuple[ResolvedModel, ...]]]:
    """What to try to hold, in order, each with the part of the plan it covers: the whole plan under
    its dearest model's bound; then, if that is dearer, the first choice's bound with the models
    that cannot cost more (see the module docstring)."""
    bounds = [cost_bound(model.entry, prompts, sampling) for model in plan]
    first, dearest = bounds[0], max(bounds, key=lambda bound: bound.nanocredits)
    if dearest.nanocredits <= first.nanocredits:
        return [(first, tuple(plan))]
    affordable = tuple(
        model for model, bound in zip(plan, bounds, strict=True) if bound.nanocredits <= first.nanocredits
    )
    return [(dearest, tuple(plan)), (first, affordable)]


def charges(priced: Sequence[tuple[ModelEntry, int, int]]) -> list[Charge]:
    """An outcome's (model, prompt tokens, completion tokens) as charges at the models' prices."""
    return [Charge(model_prices(entry), prompt, completion) for entry, prompt, completion in priced]
