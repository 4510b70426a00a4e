"""What the router counts per request (never per token): requests by served model and status,
latency, time to first output, tokens, and attempts beyond the first. Model labels are the real
ids: metrics are for operators, whom redaction does not concern."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from services.router.dispatch import Outcome

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

REQUESTS = Counter(
    "switchyard_router_requests",
    "Generate requests by served model and HTTP-equivalent status.",
    ["model", "status"],
)
LATENCY = Histogram(
    "switchyard_router_request_seconds", "Generate requests from arrival to end.", ["model"], buckets=_SECONDS
)
FIRST_OUTPUT = Histogram(
    "switchyard_router_time_to_first_output_seconds",
    "Arrival to the first token sent on.",
    ["model"],
    buckets=_SECONDS,
)
TOKENS = Counter("switchyard_router_tokens", "Tokens served, by model and kind.", ["model", "kind"])
RETRIES = Counter(
    "switchyard_router_retries",
    "Engine attempts beyond a request's first (retries and fallbacks).",
    ["model"],
)


def observe_request(outcome: Outcome, status: int, received_at: float, ended_at: float) -> None:
    model = outcome.model.entry.id if outcome.model is not None else ""
    REQUESTS.labels(model, str(status)).inc()
    LATENCY.labels(model).observe(ended_at - received_at)
    if outcome.first_output_at is not None:
        FIRST_OUTPUT.labels(model).observe(outcome.first_output_at - received_at)
    if outcome.usage.prompt_tokens:
        TOKENS.labels(model, "prompt").inc(outcome.usage.prompt_tokens)
    if outcome.usage.completion_tokens:
        TOKENS.labels(model, "completion").inc(outcome.usage.completion_tokens)
    if outcome.attempts > 1:
        RETRIES.labels(model).inc(outcome.attempts - 1)
