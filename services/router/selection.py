"""Model choice: which registry models may serve a request, how they rank, and the order in which
generation tries them. Pure: the registry, the request's features and score in; a `Selection` out.

The rule (the thresholds are `SelectionSettings`):
- An explicit `model` (anything but "" and "auto"), or a `models` list of exactly one, wins: it is the
  only candidate, whatever `exclude_*` say, as the seeds document. It must still be able to serve the
  request (tools, JSON schema, vision, logprobs); its context length is left to the engine, which
  counts tokens exactly, unless the prompt cannot fit however it is tokenized (`hopeless`: more
  than `max_chars_per_token` characters per token of the window, or too many token ids). Then the
  fallbacks are tried, and a request nothing can hold is CONTEXT_LENGTH_EXCEEDED at once.
- Otherwise the candidates are the registry (or the models in `models`) minus `exclude_models`, minus
  models of `exclude_providers`, minus models that cannot serve the request: context window shorter
  than the estimated prompt plus max_tokens, or tools / JSON schema / vision / logprobs they lack.
- The preference gives the quality the request needs: `base + per_difficulty x difficulty`.
  Among candidates meeting it the cheapest (estimated prompt + output credits) ranks first; if none
  meets it, the best quality ranks first. Scores make that order explicit: a candidate meeting the
  need scores 0.5 + 0.5 x (1 - cost / highest candidate cost), one below it 0.5 x quality / need
  (< 0.5); an ineligible one 0 and its reason.
- Generation tries the first-ranked model, then `fallback_models` in order (which `exclude_*` do not
  affect; ones that cannot serve the request are skipped), then the other candidates by rank. A
  fallback the registry does not know is skipped with a log line rather than failing a request
  whose first choice works (a fallback only matters when that one fails).
- The caller's API key may be limited to some models (`may_use`): an explicit model outside them is
  NOT_FOUND (404 model_not_found, as OpenAI answers for a model a key cannot use, which does not
  confirm the model exists); other models outside them are never candidates nor fallbacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.common.errors import ContextLengthExceededError, ModelNotFoundError, NoEligibleModelError
from services.router.features import RequestFeatures
from services.router.registry import ModelEntry, Registry, ResolvedModel
from services.router.scoring import Score
from services.router.settings import SelectionSettings
from switchyard.router.v1 import router_service_pb2 as router_pb2

logger = logging.getLogger(__name__)

AUTO_MODEL = "auto"
NOT_ALLOWED = "not allowed for this API key"


def _fallbacks(
    registry: Registry, names: Sequence[str], may_use: Callable[[str], bool]
) -> list[ResolvedModel]:
    fallbacks = []
    for name in names:
        entry = registry.find(name)
        if entry is None:
            logger.info("fallback model '%s' is not in the registry: skipped", name)
        elif may_use(entry.id):
            fallbacks.append(registry.resolve(name))
    return fallbacks


def any_model(model_id: str) -> bool:
    """The `may_use` of a caller whose key is not limited to some models."""
    return True


_PREFERENCE_NAMES = {
    router_pb2.ROUTER_PREFERENCE_UNSPECIFIED: "balanced",
    router_pb2.ROUTER_PREFERENCE_BALANCED: "balanced",
    router_pb2.ROUTER_PREFERENCE_POWERFUL: "powerful",
    router_pb2.ROUTER_PREFERENCE_EFFICIENT: "efficient",
}


@dataclass(frozen=True, slots=True)
class Candidate:
    entry: ModelEntry
    score: float
    estimated_cost: float
    eligible: bool
    excluded_reason: str = ""


@dataclass(frozen=True, slots=True)
class Selection:
    # Every model considered, best first; the ineligible ones last with their reasons.
    candidates: tuple[Candidate, ...]
    # The models generation tries, in order (the base model or a LoRA adapter for each).
    plan: tuple[ResolvedModel, ...]
    preference: str
    quality_needed: float
    explicit: bool
    # The name the caller gave the model it asked for explicitly, when that model is the first of
    # the plan; "" otherwise. Responses may echo it: it tells the caller nothing they did not send.
    named: str = ""


def preference_name(preference: int) -> str:
    return _PREFERENCE_NAMES.get(preference, "balanced")


def incapability(entry: ModelEntry, features: RequestFeatures) -> str:
    """Why `entry` cannot serve the request whatever its context length, or "" if it can."""
    capabilities = entry.capabilities
    if features.wants_tools and not capabilities.tools:
        return "does not support tools"
    if features.wants_json_schema and not capabilities.json_schema:
        return "does not support json_schema response formats"
    if features.has_images and not capabilities.vision:
        return "does not accept image input"
    if features.top_logprobs is not None and features.top_logprobs > capabilities.max_logprobs:
        return f"returns at most {capabilities.max_logprobs} top logprobs, {features.top_logprobs} asked for"
    return ""


def exclusion(entry: ModelEntry, features: RequestFeatures) -> str:
    """Why the router may not choose `entry` for the request, or "" if it may."""
    reason = incapability(entry, features)
    if reason:
        return reason
    needed = features.prompt_tokens + (features.max_tokens or 1)
    if needed > entry.context_window:
        return f"context window {entry.context_window} < about {needed} tokens (prompt + max_tokens)"
    return ""


def hopeless(entry: ModelEntry, features: RequestFeatures, settings: SelectionSettings) -> bool:
    """Whether the prompt cannot fit `entry`'s context window however it is tokenized."""
    window = entry.context_window
    if features.kind == "tokens":  # counted exactly
        return features.prompt_tokens >= window
    return features.prompt_chars > window * settings.max_chars_per_token


def estimated_cost(entry: ModelEntry, features: RequestFeatures, settings: SelectionSettings) -> float:
    output = features.output_tokens_requested or settings.default_output_tokens * features.n
    return entry.price(features.prompt_tokens, output)


def select_models(
    registry: Registry,
    features: RequestFeatures,
    score: Score,
    *,
    model: str,
    routing: router_pb2.RoutingOptions,
    settings: SelectionSettings,
    may_use: Callable[[str], bool] = any_model,
) -> Selection:
    """Candidates, ranking and plan for one request (see the module docstring). `may_use` tells
    which model ids the caller's key may use. Raises ModelNotFoundError for an explicit model the
    registry lacks or the key may not use, NoEligibleModelError
    when nothing can serve."""
    preference = preference_name(routing.preference)
    need = settings.quality_needed(preference, score.difficulty)
    fallbacks = _fallbacks(registry, routing.fallback_models, may_use)

    explicit_name = model if model and model != AUTO_MODEL else ""
    # Every `models` entry must exist even when an explicit model makes the list moot: a typo there
    # is the caller's mistake to hear about (resolve raises ModelNotFoundError).
    for listed in routing.models:
        registry.resolve(listed)
    if not explicit_name and len(routing.models) == 1:
        explicit_name = routing.models[0]
    if explicit_name:
        resolved = registry.resolve(explicit_name)
        if not may_use(resolved.entry.id):
            raise ModelNotFoundError(explicit_name)
        reason = incapability(resolved.entry, features)
        if reason:
            raise NoEligibleModelError(
                f"The model '{explicit_name}' cannot serve this request: it {reason}.",
                metadata={"param": "model", "excluded": f"{resolved.entry.id}: {reason}"},
            )
        chosen = Candidate(resolved.entry, 1.0, estimated_cost(resolved.entry, features, settings), True)
        plan = tuple(
            planned
            for planned in _plan([resolved], fallbacks, features)
            if not hopeless(planned.entry, features, settings)
        )
        if not plan:
            raise ContextLengthExceededError(
                f"The prompt is longer than the context window of the model '{explicit_name}' "
                f"({resolved.entry.context_window} tokens) could hold.",
                param="messages" if features.kind == "chat" else "prompt",
            )
        named = explicit_name if plan[0] is resolved else ""
        return Selection((chosen,), plan, preference, need, explicit=True, named=named)

    if routing.models:
        pool = list(
            {resolved.entry.id: resolved for resolved in map(registry.resolve, routing.models)}.values()
        )
    else:
        pool = registry.routable
    excluded_models = {found.id for found in map(registry.find, routing.exclude_models) if found is not None}
    excluded_providers = set(routing.exclude_providers)

    eligible: list[tuple[ResolvedModel, float]] = []
    ineligible: list[Candidate] = []
    for resolved in pool:
        entry = resolved.entry
        if not may_use(entry.id):
            reason = NOT_ALLOWED
        elif entry.id in excluded_models:
            reason = "excluded by exclude_models"
        elif entry.provider in excluded_providers:
            reason = f"provider '{entry.provider}' excluded by exclude_providers"
        else:
            reason = exclusion(entry, features)
        cost = estimated_cost(entry, features, settings)
        if reason:
            ineligible.append(Candidate(entry, 0.0, cost, False, reason))
        else:
            eligible.append((resolved, cost))

    if not eligible:
        # Models the key may not use stay unnamed: /v1/models does not list them either.
        details = "; ".join(
            f"{candidate.entry.id}: {candidate.excluded_reason}"
            for candidate in ineligible
            if candidate.excluded_reason != NOT_ALLOWED
        )
        raise NoEligibleModelError(
            f"No model can serve this request ({details or 'no models were offered'}).",
            metadata={"excluded": details},
        )

    highest_cost = max(cost for _, cost in eligible)
    ranked: list[tuple[float, ResolvedModel, Candidate]] = []
    for resolved, cost in eligible:
        entry = resolved.entry
        if entry.quality >= need:
            value = 0.5 + 0.5 * (1.0 - cost / highest_cost) if highest_cost > 0 else 1.0
        else:
            value = 0.5 * entry.quality / need * 0.999  # strictly below every model that meets the need
        candidate = Candidate(entry, round(value, 6), cost, True)
        ranked.append((value, resolved, candidate))
    ranked.sort(key=lambda item: (-item[0], -item[1].entry.quality, item[1].entry.id))

    plan = _plan([resolved for _, resolved, _ in ranked], fallbacks, features)
    candidates = tuple(candidate for _, _, candidate in ranked) + tuple(ineligible)
    return Selection(candidates, plan, preference, need, explicit=False)


def _plan(
    ranked: list[ResolvedModel],
    fallbacks: list[ResolvedModel],
    features: RequestFeatures,
) -> tuple[ResolvedModel, ...]:
    """First choice, then fallbacks in order (skipping ones that cannot serve), then the rest of the
    ranked candidates; each model (or adapter) once."""
    capable_fallbacks = [fallback for fallback in fallbacks if not incapability(fallback.entry, features)]
    seen: set[tuple[str, str]] = set()
    plan = []
    for resolved in (*ranked[:1], *capable_fallbacks, *ranked[1:]):
        key = (resolved.entry.id, resolved.engine_model)
        if key not in seen:
            seen.add(key)
            plan.append(resolved)
    return tuple(plan)
