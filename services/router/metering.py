"""Accounting around one routed request: the state layer (services/router/accounting) applied to
the router's decisions and dispatch outcomes. Per Generate call the servicer does:

    metered = await metering.begin(request, context)   # authenticates: UNAUTHENTICATED otherwise
    plan, cached = await metered.admit(decision, routing_time)   # cache lookup, limits, credit hold
    await context.send_initial_metadata(metered.rate_limit_headers)
    ... dispatch `plan`, or replay `cached` (no engine work) ...
    cost = metered.finish(outcome, error)   # on every exit, without waiting: settle, cache, log

`finish` bills `outcome.usage`: the engine's usage, or for a stream that ended early what its caller
was sent (services.router.dispatch.bill_what_was_sent). Every request that got past authentication
gets a request log row, refusals (404, 429, ...) included, with the HTTP status its caller saw.

With accounting disabled every caller is `ANONYMOUS` (any model, no limits) and nothing is held,
billed, cached or logged.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

import grpc

from services.common.errors import (
    HTTP_STATUS,
    InsufficientQuotaError,
    RemoteError,
    ServiceError,
    reason_name,
)
from services.router.accounting import (
    Accounting,
    Admission,
    CachedResponse,
    Prices,
    Principal,
    RequestLogEntry,
)
from services.router.billing import CostBound, charges, model_prices, plan_holds
from services.router.decision import Decision
from services.router.dispatch import Outcome, display_name
from services.router.metrics import observe_request
from services.router.redaction import REDACTED
from services.router.registry import ResolvedModel
from switchyard.inference.v1 import inference_pb2
from switchyard.router.v1 import router_service_pb2 as router_pb2

# Who calls when accounting is disabled: no key, no limits, every model.
ANONYMOUS = Principal(key_id="", name="anonymous")
# The metadata twin of GenerateRequest.disable_cache (the edge forwards the HTTP header).
CACHE_HEADER = "x-switchyard-cache"
# nginx's "client closed request": the caller went away before the response ended.
CLIENT_CLOSED_REQUEST = 499

def header(metadata: Iterable[tuple[str, str | bytes]] | None, name: str) -> str:
    for key, value in metadata or ():
        if key == name and isinstance(value, str):
            return value
    return ""


def ended_with(error: BaseException | None, deadline_passed: bool) -> tuple[int, str]:
    """The HTTP status and ErrorInfo reason a request ended with."""
    if error is None:
        return 200, ""
    if isinstance(error, ServiceError):
        return HTTP_STATUS.get(error.code, 500), reason_name(error.reason) if error.reason else ""
    if isinstance(error, RemoteError):
        return HTTP_STATUS.get(error.code, 500), error.reason
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        # gRPC cancels the handler both when the caller goes and when its deadline passes.
        return (504, "TIMEOUT") if deadline_passed else (CLIENT_CLOSED_REQUEST, "")
    return 500, ""


def choice_texts(deltas: Sequence[inference_pb2.TokenDelta]) -> list[str]:
    """Each choice's text, in choice order."""
    texts: dict[int, list[str]] = {}
    for delta in deltas:
        texts.setdefault(delta.index, []).append(delta.text)
    return ["".join(texts[index]) for index in sorted(texts)]


async def replay(
    cached: CachedResponse, model: ResolvedModel, reveal: bool, outcome: Outcome
) -> AsyncIterator[bytes | router_pb2.GenerateResponse]:
    """A cache hit as a Generate stream: `routed` (no replica: no engine serves it), then the stored
    deltas; `outcome` as a dispatch would leave it, with no attempt made."""
    outcome.model = model
    outcome.first_output_at = time.perf_counter()
    outcome.usage.CopyFrom(cached.usage)
    outcome.charges = [(model.entry, cached.usage.prompt_tokens, cached.usage.completion_tokens)]
    yield router_pb2.GenerateResponse(
        routed=router_pb2.Routed(model=display_name(model) if reveal else REDACTED)
    )
    for delta in cached.deltas:
        event = router_pb2.GenerateResponse(delta=delta).SerializeToString()
        outcome.transcript.append(event)
        yield event


class Metering:
    """What the router's RPCs ask of its accounting (`accounting` is None when it is disabled)."""

    def __init__(self, accounting: Accounting | None, *, reveal_model_names: bool) -> None:
        self.accounting = accounting
        # The global override: everyone sees real model names.
        self._reveal_to_everyone = reveal_model_names

    async def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        if self.accounting is None:
            return ANONYMOUS
        return await self.accounting.authenticate_metadata(metadata)

    def reveals(self, principal: Principal) -> bool:
        return self._reveal_to_everyone or principal.reveal_model_names

    async def begin(
        self, request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> MeteredRequest:
        received_at, timestamp = time.perf_counter(), time.time()
        metadata = context.invocation_metadata()
        principal = await self.authenticate(metadata)
        return MeteredRequest(
            self.accounting,
            principal,
            request,
            request_id=request.request_id or header(metadata, "x-request-id") or uuid.uuid4().hex,
            reveal=self.reveals(principal),
            use_cache=not request.disable_cache and header(metadata, CACHE_HEADER).lower() != "off",
            time_remaining=context.time_remaining,
            received_at=received_at,
            timestamp=timestamp,
        )


class MeteredRequest:
    """One Generate call's admission, settlement, cache entry and request log row."""

    def __init__(
        self,
        accounting: Accounting | None,
        principal: Principal,
        request: router_pb2.GenerateRequest,
        *,
        request_id: str,
        reveal: bool,
        use_cache: bool,
        time_remaining: Callable[[], float | None],
        received_at: float,
        timestamp: float,
    ) -> None:
        self.principal = principal
        self.request = request
        self.request_id = request_id
        self.reveal = reveal
        # OpenAI's x-ratelimit-* values after the admission, for the caller's response headers.
        self.rate_limit_headers: tuple[tuple[str, str], ...] = ()
        # time.perf_counter() when the call arrived, and its wall-clock time.
        self.received_at = received_at
        self.timestamp = timestamp
        self.cached: CachedResponse | None = None
        self._accounting = accounting
        # A batch's response is several prompts' answers: not what a one-prompt request would get.
        self._use_cache = use_cache and accounting is not None and not request.batch
        # The input the request log keeps, whose sampling every prompt shares: the batch's first.
        self._input = request.batch[0] if request.batch else request.input
        self._time_remaining = time_remaining
        self._decision: Decision | None = None
        self._routing_time: float | None = None
        self._admission: Admission | None = None

    async def admit(
        self, decision: Decision, routing_time: float
    ) -> tuple[tuple[ResolvedModel, ...], CachedResponse | None]:
        """Takes the request under the key's rate limits and holds its credits. Returns the plan to
        dispatch (possibly shortened, see services/router/billing.py) and, on a response-cache hit,
        the response to replay instead. Raises RateLimitExceededError or InsufficientQuotaError."""
        self._decision, self._routing_time = decision, routing_time
        plan = decision.selection.plan
        if self._accounting is None:
            return plan, None
        first = plan[0]
        self.cached = self._accounting.cache_lookup(
            self.principal, display_name(first), self.request.input, use_cache=self._use_cache
        )
        if self.cached is not None:
            # Held and billed as the stored usage at the model's prices, times the cache's price factor.
            usage = self.cached.usage
            await self._hold(
                self._accounting,
                first,
                model_prices(first.entry),
                usage.prompt_tokens,
                usage.completion_tokens,
                cached=True,
            )
            return (first,), self.cached
        options = plan_holds(plan, decision.prompts, self._input.sampling)
        for bound, covered in options[:-1]:
            try:
                await self._hold_bound(self._accounting, first, bound)
            except InsufficientQuotaError:
                continue
            return covered, None
        bound, covered = options[-1]
        await self._hold_bound(self._accounting, first, bound)
        return covered, None

    async def _hold_bound(self, accounting: Accounting, first: ResolvedModel, bound: CostBound) -> None:
        await self._hold(
            accounting, first, bound.prices, bound.prompt_tokens, bound.max_completion_tokens, cached=False
        )

    async def _hold(
        self,
        accounting: Accounting,
        first: ResolvedModel,
        prices: Prices,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        cached: bool,
    ) -> None:
        self._admission = await accounting.admit(
            self.principal,
            request_id=self.request_id,
            model=first.entry.id,
            prices=prices,
            prompt_tokens=prompt_tokens,
            max_completion_tokens=completion_tokens,
            cached=cached,
        )
        self.rate_limit_headers = tuple(self._admission.rate_limit_headers.items())

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> float:
        """Settles the credits for `outcome.usage` (releasing the rest of the hold), stores a
        complete deterministic response in the cache and records the request log entry, all
        without waiting (the database writes run in the background). Returns the cost in credits.
        Call it once the request ended, however it ended."""
        remaining = self._time_remaining()
        status, reason = ended_with(error, deadline_passed=remaining is not None and remaining <= 0)
        observe_request(outcome, status, self.received_at, time.perf_counter())
        accounting = self._accounting
        if accounting is None:
            return outcome.cost
        cost = 0.0
        cost_nanocredits = 0
        if self._admission is not None:
            # The balance shows it a moment later; the caller does not wait for the write.
            settlement = accounting.settle_in_background(
                self._admission, outcome.usage, charges=charges(outcome.charges)
            )
            cost, cost_nanocredits = settlement.cost, settlement.cost_nanocredits
        keep_text = not self.request.disable_log
        store = error is None and self.cached is None and self._cacheable(outcome)
        deltas = outcome.transcript.deltas() if keep_text or store else []
        if store:
            accounting.cache_store(
                self.principal,
                display_name(outcome.model),  # type: ignore[arg-type]
                self.request.input,
                deltas,
                outcome.usage,
                use_cache=self._use_cache,
            )
        accounting.record(
            self._log_entry(
                outcome, status, reason, cost_nanocredits, choice_texts(deltas) if keep_text else []
            )
        )
        return cost

    def _cacheable(self, outcome: Outcome) -> bool:
        """Only an uninterrupted response of the first-choice model is what a repeat would get."""
        decision = self._decision
        return (
            self._use_cache
            and decision is not None
            and outcome.model is decision.selection.plan[0]
            and not outcome.resumed
        )

    def _log_entry(
        self,
        outcome: Outcome,
        status: int,
        reason: str,
        cost_nanocredits: int,
        completions: list[str],
    ) -> RequestLogEntry:
        request, decision, served, usage = self.request, self._decision, outcome.model, outcome.usage
        return RequestLogEntry(
            request_id=self.request_id,
            key_id=self.principal.key_id,
            status_code=status,
            error_reason=reason,
            customer_identifier=request.customer_identifier,
            metadata=request.metadata if request.HasField("metadata") else None,
            model=display_name(served) if served is not None else "",
            provider=served.entry.provider if served is not None else "",
            category=decision.score.category if decision is not None else "",
            difficulty=decision.score.difficulty if decision is not None else None,
            preference=decision.selection.preference if decision is not None else "",
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            cost_nanocredits=cost_nanocredits,
            latency=time.perf_counter() - self.received_at,
            time_to_first_token=(
                outcome.first_output_at - self.received_at if outcome.first_output_at is not None else None
            ),
            routing_time=self._routing_time,
            stream=request.stream,
            attempts=outcome.attempts,
            fallbacks_used=outcome.fallbacks_used,
            cached=self.cached is not None,
            request=self._input,
            completions=completions,
            log_disabled=request.disable_log,
            created=self.timestamp,
        )
