"""The request breakdown (the hosted routers' `request_breakdown`) and the candidate scores, with
model names redacted for callers who may not see them."""

from __future__ import annotations

from services.router.decision import Decision
from services.router.dispatch import Outcome, display_name
from services.router.redaction import REDACTED
from services.router.selection import Selection
from switchyard.router.v1 import router_service_pb2 as router_pb2

_PREFERENCES = {
    "balanced": router_pb2.ROUTER_PREFERENCE_BALANCED,
    "powerful": router_pb2.ROUTER_PREFERENCE_POWERFUL,
    "efficient": router_pb2.ROUTER_PREFERENCE_EFFICIENT,
}
# The breakdown is only sent with a successful finish: the HTTP status the caller gets.
_STATUS_OK = 200


def candidate_scores(selection: Selection, reveal: bool, named: str = "") -> list[router_pb2.CandidateScore]:
    """Best first, ineligible last. Redacted: names and providers hidden, numbers and reasons kept;
    `named` is what the caller called the one candidate of an explicit request."""
    return [
        router_pb2.CandidateScore(
            model=candidate.entry.id if reveal else (named if selection.explicit and named else REDACTED),
            provider=candidate.entry.provider if reveal else REDACTED,
            score=candidate.score,
            quality=candidate.entry.quality,
            estimated_cost=candidate.estimated_cost,
            eligible=candidate.eligible,
            excluded_reason=candidate.excluded_reason,
        )
        for candidate in selection.candidates
    ]


def build_breakdown(
    request: router_pb2.GenerateRequest,
    decision: Decision,
    outcome: Outcome,
    *,
    reveal: bool,
    cost: float,
    cached: bool,
    received_at: float,
    finished_at: float,
    timestamp: float,
    routing_time: float,
) -> router_pb2.RequestBreakdown:
    """`cost`: the credits billed (what a cache hit costs, not what the engine would have);
    `received_at`/`finished_at` are time.perf_counter() readings; `timestamp` is wall-clock time."""
    served = outcome.model
    selection = decision.selection
    # The name the caller sent, when that model served: it reveals nothing they did not send, and
    # it is what the response's `model` says too.
    named = selection.named if served is not None and served is selection.plan[0] else ""
    breakdown = router_pb2.RequestBreakdown(
        prompt_tokens=outcome.usage.prompt_tokens,
        completion_tokens=outcome.usage.completion_tokens,
        cached_tokens=outcome.usage.cached_tokens,
        cost=cost,
        model=(display_name(served) if reveal else named or REDACTED) if served is not None else "",
        provider=(served.entry.provider if reveal else REDACTED) if served is not None else "",
        category=decision.score.category,
        difficulty=decision.score.difficulty,
        preference=_PREFERENCES[selection.preference],
        scores=candidate_scores(selection, reveal, named=named),
        routing_time=routing_time,
        latency=finished_at - received_at,
        time_to_first_token=(outcome.first_output_at - received_at) if outcome.first_output_at else 0.0,
        attempts=outcome.attempts,
        fallbacks_used=outcome.fallbacks_used if reveal else [REDACTED] * len(outcome.fallbacks_used),
        cached=cached,
        status_code=_STATUS_OK,
        stream=request.stream,
    )
    breakdown.timestamp.FromNanoseconds(int(timestamp * 1e9))
    if request.HasField("metadata"):
        breakdown.metadata.CopyFrom(request.metadata)
    return breakdown
