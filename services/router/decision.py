"""The routing decision for one request: its features, its score and the model selection.
Everything here runs before any engine work and is shared by Route and Generate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from services.router.features import RequestFeatures, extract_features
from services.router.registry import Registry
from services.router.scoring import Score, Scorer
from services.router.selection import Selection, any_model, select_models
from services.router.settings import SelectionSettings
from switchyard.router.v1 import router_service_pb2 as router_pb2


@dataclass(frozen=True, slots=True)
class Decision:
    # What the request was routed as: its one prompt, or the longest prompt of a batch.
    features: RequestFeatures
    score: Score
    selection: Selection
    # Every prompt's features (one unless the request is a batch): what its credit hold must cover.
    prompts: tuple[RequestFeatures, ...]


def decide(
    registry: Registry,
    request: router_pb2.GenerateRequest,
    scorer: Scorer,
    settings: SelectionSettings,
    may_use: Callable[[str], bool] = any_model,
) -> Decision:
    """`may_use`: the model ids the caller's key may use. Raises ModelNotFoundError,
    PermissionDeniedError or NoEligibleModelError when the request cannot be routed.

    A batch (GenerateRequest.batch) is routed as its longest prompt: a model chosen for that one
    holds every prompt of the batch."""
    if request.batch:
        prompts = tuple(extract_features(prompt, settings.chars_per_token) for prompt in request.batch)
        features = max(prompts, key=lambda prompt: prompt.prompt_tokens)
    else:
        features = extract_features(request.input, settings.chars_per_token)
        prompts = (features,)
    score = scorer.score(features)
    selection = select_models(
        registry,
        features,
        score,
        model=request.model,
        routing=request.routing,
        settings=settings,
        may_use=may_use,
    )
    return Decision(features, score, selection, prompts)
