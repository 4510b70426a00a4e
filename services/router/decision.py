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
    features: RequestFeatures
    score: Score
    selection: Selection


def decide(
    registry: Registry,
    request: router_pb2.GenerateRequest,
    scorer: Scorer,
    settings: SelectionSettings,
    may_use: Callable[[str], bool] = any_model,
) -> Decision:
    """`may_use`: the model ids the caller's key may use. Raises ModelNotFoundError,
    PermissionDeniedError or NoEligibleModelError when the request cannot be routed."""
    features = extract_features(request.input, settings.chars_per_token)
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
    return Decision(features, score, selection)
