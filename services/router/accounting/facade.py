"""`Accounting`: the one object the router calls for keys, credits, limits, the request log and the
response cache. Per request, in order (services/router/metering.py is the router's use of it):

    principal = await accounting.authenticate_metadata(context.invocation_metadata())
    cached = accounting.cache_lookup(principal, model, request.input)     # None on a miss
    admission = await accounting.admit(principal, request_id=..., model=..., prices=...,
                                       prompt_tokens=..., max_completion_tokens=...,
                                       cached=cached is not None)
    await context.send_initial_metadata(tuple(admission.rate_limit_headers.items()))
    try:
        ... generate (or replay `cached`), counting usage ...
    finally:
        # also on error or cancellation; `charges` when several models produced the usage; the
        # router does not wait for the write (settle_in_background)
        settlement = await accounting.settle(admission, usage, charges=...)
    accounting.cache_store(principal, model, request.input, deltas, usage)   # complete responses only
    accounting.record(RequestLogEntry(..., cost_nanocredits=settlement.cost_nanocredits))

Hot path: `authenticate` is a dict lookup after the first call per key (key_cache_seconds); limits
are in memory; a priced request's hold is drawn from the key's credit lease in memory (leases.py),
its charge written with others in one batched transaction, so it touches the database only when the
lease must grow; `record` and the cache never await.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cachetools import TTLCache

from services.common.errors import InvalidApiKeyError, PermissionDeniedError
from services.router.accounting import migrations
from services.router.accounting.credits import CreditLedger
from services.router.accounting.database import Database
from services.router.accounting.keys import KeyStore, Principal, hash_secret
from services.router.accounting.leases import Draw, LeaseBook
from services.router.accounting.pricing import (
    Charge,
    Prices,
    credits_to_nanocredits,
    nanocredits_to_credits,
    total_cost,
)
from services.router.accounting.queries import RequestLogReader
from services.router.accounting.rate_limits import RateLimiter, RateLimitTicket
from services.router.accounting.request_log import RequestLogEntry, RequestLogWriter
from services.router.accounting.response_cache import (
    CachedResponse,
    ResponseCache,
    cache_key,
    is_deterministic,
)
from services.router.accounting.settings import AccountingSettings
from switchyard.inference.v1 import inference_pb2

logger = logging.getLogger(__name__)

_UNKNOWN_KEY = object()


def bearer_key(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The key in `authorization: Bearer KEY` call metadata, or InvalidApiKeyError."""
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str):
            scheme, _, key = value.partition(" ")
            if scheme.lower() == "bearer" and key.strip():
                return key.strip()
    raise InvalidApiKeyError(
        "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' (an HTTP header, or "
        "gRPC call metadata)."
    )


@dataclass(slots=True)
class Admission:
    """An admitted request: its hold on credits and its place under the key's rate limits."""

    principal: Principal
    request_id: str
    model: str
    prices: Prices
    cached: bool
    # OpenAI's x-ratelimit-* headers after this admission, for the edge's response.
    rate_limit_headers: dict[str, str]
    _ticket: RateLimitTicket = field(repr=False)
    _draw: Draw | None = field(repr=False)
    _settlement: Settlement | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Settlement:
    cost_nanocredits: int

    @property
    def cost(self) -> float:
        """Credits, for the breakdown."""
        return nanocredits_to_credits(self.cost_nanocredits)


class Accounting:
    def __init__(self, settings: AccountingSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.database = Database(
            settings.database_url, sqlite_busy_timeout=settings.sqlite_busy_timeout_seconds
        )
        self.keys = KeyStore(self.database)
        self.ledger = CreditLedger(self.database, settings.instance_name)
        self._leases = LeaseBook(
            self.ledger,
            lease_size=credits_to_nanocredits(settings.credit_lease_credits),
            idle_seconds=settings.credit_lease_idle_seconds,
            clock=clock,
        )
        self.log = RequestLogReader(self.database)
        self._log_writer = RequestLogWriter(
            self.database,
            queue_size=settings.log_queue_size,
            batch_size=settings.log_batch_size,
            max_linger=settings.log_max_linger_seconds,
        )
        self._limiter = RateLimiter(clock)
        self._principals: TTLCache[str, object] = TTLCache(
            maxsize=settings.key_cache_size, ttl=settings.key_cache_seconds, timer=clock
        )
        self._responses = ResponseCache(
            max_bytes=settings.response_cache_max_bytes,
            ttl_seconds=settings.response_cache_ttl_seconds,
            clock=clock,
        )
        # Writes of charges that a cancelled caller cannot interrupt; close() waits for them.
        self._background: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._charge_writer: asyncio.Task[None] | None = None
        self._lease_refresher: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Migrates (when configured), reconciles what a previous run left open, starts writing the
        request log and the charges, and sweeping abandoned leases."""
        if self.settings.migrate_on_start:
            await migrations.upgrade(self.database)
        released = await self.reconcile(own=True)
        if released:
            logger.warning(
                "released %d credit leases left open by an earlier run (their unwritten charges are not "
                "billed)",
                released,
            )
        self._log_writer.start()
        self._sweeper = asyncio.create_task(self._sweep_abandoned(), name="lease-sweeper")
        self._charge_writer = asyncio.create_task(self._write_charges(), name="charge-writer")
        self._lease_refresher = asyncio.create_task(self._refresh_leases(), name="lease-refresher")

    async def close(self) -> None:
        """After the server has drained: finishes settlements, writes the log, closes the database."""
        for task in (self._sweeper, self._charge_writer, self._lease_refresher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.settled()
        await self._leases.close()
        await self._log_writer.close()
        await self.database.dispose()

    async def reconcile(self, *, own: bool) -> int:
        """Releases abandoned leases (see credits.py); `own` includes every one this instance
        holds, which is right only when none of its requests is running (at start)."""
        older_than = datetime.now(UTC) - timedelta(seconds=self.settings.reservation_max_age_seconds)
        return await self.ledger.release_abandoned(older_than=older_than, own=own)

    # -- keys --------------------------------------------------------------------------------------

    async def authenticate(self, api_key: str) -> Principal:
        """The key's principal, from memory when checked in the last key_cache_seconds; unknown
        and revoked keys raise InvalidApiKeyError (and are remembered as unknown as briefly)."""
        digest = hash_secret(api_key)
        principal = self._principals.get(digest)
        if principal is None:
            principal = await self.keys.principal_for(digest) or _UNKNOWN_KEY
            self._principals[digest] = principal
        if principal is _UNKNOWN_KEY:
            raise InvalidApiKeyError("Incorrect API key provided.")
        return principal  # type: ignore[return-value]

    async def authenticate_metadata(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        return await self.authenticate(bearer_key(metadata))

    def forget_keys(self) -> None:
        """Drops the key cache, so that changes made here (a revocation) apply at once."""
        self._principals.clear()

    # -- credits and limits ------------------------------------------------------------------------

    async def admit(
        self,
        principal: Principal,
        *,
        request_id: str,
        model: str,
        prices: Prices,
        prompt_tokens: int,
        max_completion_tokens: int,
        cached: bool = False,
    ) -> Admission:
        """Checks the key may use `model`, takes the request under its rate limits and holds the
        most it can cost (pricing.max_completion_tokens gives the output bound). Raises
        PermissionDeniedError, RateLimitExceededError or InsufficientQuotaError."""
        if not principal.may_use(model):
            raise PermissionDeniedError(
                "This API key may not use the requested model.", metadata={"param": "model"}
            )
        ticket, headers = self._limiter.acquire(principal, prompt_tokens + max_completion_tokens)
        amount = prices.cost(prompt_tokens, max_completion_tokens, self._price_factor(cached))
        draw = None
        if amount:
            try:
                draw = await self._leases.draw(principal.key_id, amount)
            except BaseException:
                self._limiter.release(ticket, None)
                raise
        return Admission(principal, request_id, model, prices, cached, headers, ticket, draw)

    async def settle(
        self, admission: Admission, usage: inference_pb2.Usage, *, charges: Sequence[Charge] | None = None
    ) -> Settlement:
        """Bills the usage (also of a failed, cancelled or timed-out request: what was generated is
        billed) and releases the rest of the hold; returns once that is written and the leases no
        request uses are returned (the router's path is settle_in_background). `charges` split the
        usage by the model that produced it when that is not the admitted model alone (a fallback,
        a resumed stream); without them the usage is billed at the admission's prices. Safe to call
        from `finally` while cancelled: the database work finishes even if the caller does not
        wait. Settling twice returns the first result."""
        settlement, queued = self._begin_settlement(admission, usage, charges)
        if queued:
            await asyncio.shield(self._spawn(self._write_and_return_leases()))
        return settlement

    def settle_in_background(
        self, admission: Admission, usage: inference_pb2.Usage, *, charges: Sequence[Charge] | None = None
    ) -> Settlement:
        """`settle` without the wait: what the request costs is known at once and the charge is
        written with the next batch (`settled()` and `close()` wait for it), so a response never
        waits for its bill. The key's next draw cannot overspend meanwhile: the lease counts the
        unwritten charge as spent."""
        return self._begin_settlement(admission, usage, charges)[0]

    async def settled(self) -> None:
        """Returns once every settlement begun so far is written and the leases no request uses are
        returned, so that the balance reads top-ups - charges."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._write_and_return_leases()

    async def _write_and_return_leases(self) -> None:
        await self._leases.write()
        await self._leases.return_idle(at_once=True)

    def _begin_settlement(
        self, admission: Admission, usage: inference_pb2.Usage, charges: Sequence[Charge] | None
    ) -> tuple[Settlement, bool]:
        """The settlement, and whether a charge was queued for writing."""
        if admission._settlement is not None:
            return admission._settlement, False
        used = usage.prompt_tokens + usage.completion_tokens
        self._limiter.release(admission._ticket, used)
        if charges is None:
            charges = (Charge(admission.prices, usage.prompt_tokens, usage.completion_tokens),)
        cost = total_cost(charges, self._price_factor(admission.cached))
        settlement = admission._settlement = Settlement(cost)
        if admission._draw is None and cost == 0:
            return settlement, False
        # With no draw: usage beyond an estimate of zero, billed without a hold.
        self._leases.settle(
            admission._draw,
            admission.principal.key_id,
            cost,
            request_id=admission.request_id,
            model=admission.model,
        )
        return settlement, True

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _price_factor(self, cached: bool) -> float:
        return self.settings.cached_response_price_factor if cached else 1.0

    async def _write_charges(self) -> None:
        """Writes the charges every settlement_interval_seconds, in one transaction, and returns the
        leases idle for credit_lease_idle_seconds."""
        while True:
            await asyncio.sleep(self.settings.settlement_interval_seconds)
            try:
                await self._leases.write()
                await self._leases.return_idle()
            except Exception:
                logger.exception("writing credit charges failed; retrying later")

    async def refresh_leases(self) -> None:
        """Marks this router's credit leases as in use now (see reservation_max_age_seconds)."""
        await self._leases.refresh()

    async def _refresh_leases(self) -> None:
        """Refreshes the leases four times per reservation_max_age_seconds, so that a lease a long
        stream holds is never swept while its router lives: a sweep then needs three refreshes in a
        row to fail or a clock skew between routers of most of the max age."""
        while True:
            await asyncio.sleep(self.settings.reservation_max_age_seconds / 4)
            try:
                await self.refresh_leases()
            except Exception:
                logger.exception("refreshing credit leases failed; retrying later")

    async def _sweep_abandoned(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reconcile_interval_seconds)
            try:
                released = await self.reconcile(own=False)
            except Exception:
                logger.exception("sweeping abandoned credit leases failed; retrying later")
                continue
            if released:
                logger.warning(
                    "released %d credit leases of other routers older than %.0fs",
                    released,
                    self.settings.reservation_max_age_seconds,
                )

    # -- request log -------------------------------------------------------------------------------

    def record(self, entry: RequestLogEntry) -> None:
        """Queues the entry for the request log; never waits (see request_log.py)."""
        self._log_writer.record(entry)

    async def flush_log(self) -> None:
        """Waits until everything recorded so far is written."""
        await self._log_writer.flush()

    # -- response cache ----------------------------------------------------------------------------

    def cache_lookup(
        self,
        principal: Principal,
        model: str,
        generation: inference_pb2.GenerationInput,
        *,
        use_cache: bool = True,
    ) -> CachedResponse | None:
        """A stored response for this exact deterministic request, or None."""
        if not self._cacheable(generation, use_cache):
            return None
        return self._responses.get(cache_key(principal.key_id, model, generation))

    def cache_store(
        self,
        principal: Principal,
        model: str,
        generation: inference_pb2.GenerationInput,
        deltas: Sequence[inference_pb2.TokenDelta],
        usage: inference_pb2.Usage,
        *,
        use_cache: bool = True,
    ) -> None:
        """Stores a complete response (every choice finished) of a deterministic request."""
        if self._cacheable(generation, use_cache):
            self._responses.put(cache_key(principal.key_id, model, generation), deltas, usage)

    def _cacheable(self, generation: inference_pb2.GenerationInput, use_cache: bool) -> bool:
        return use_cache and self.settings.response_cache and is_deterministic(generation)
