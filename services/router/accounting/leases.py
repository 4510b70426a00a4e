"""Credit leases: each request's hold drawn in memory from a block of its key's credits.

A `LeaseBook` keeps at most one lease per key for this router. A draw that fits in the lease's free
part (taken, less the holds of running requests and the charges not yet written) costs no database
work; one that does not grows the lease first, by at least what is missing and at most
`lease_size` (the key's balance permitting), in one transaction (CreditLedger.take). A request's
settlement returns its hold to the lease and queues its charge; `write` bills the queued charges in
one transaction (a background task calls it every few hundredths of a second), and `return_idle`
gives back the leases no request is using. The ledger's side, and what a crash leaves, is described
in credits.py.

No overspend: a draw never exceeds its lease's free part, and a lease only ever holds credits
taken from the balance under its `balance >= amount` condition. A key is refused (insufficient
quota) only when its balance and this router's lease together cannot cover the hold. Credits
leased by another router are out of reach until it returns them (idle after `idle_seconds`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from services.router.accounting.credits import Charge, CreditLedger, LeaseLost

logger = logging.getLogger(__name__)

# switchyard_credit_charge_writes_failed_total, exposed on the router's metrics port
# (SWITCHYARD_ROUTER_METRICS_PORT).
CHARGES_NOT_WRITTEN = Counter(
    "switchyard_credit_charge_writes_failed",
    "Batches of charges the database refused; they are written again with the next batch.",
)


class _DrawIds:
    """Unique ids for draws (a settlement's reservation_id, at most 36 characters) without a uuid4
    per request: 80 random bits per LeaseBook, which tell routers and runs apart, then a counter."""

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:20]
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"


@dataclass(slots=True, eq=False)
class Lease:
    id: str
    key_id: str
    # Open in the database: what was taken, less the charges written.
    amount: int = 0
    # The holds of the requests running on it.
    held: int = 0
    # Charges settled here and not written yet.
    unwritten: int = 0
    # Requests running on it, and its grant while one is in flight: a lease being grown must not be
    # returned meanwhile, or the grant could commit first and the return hand its credits back to
    # the balance while the requests still draw on them here.
    running: int = 0
    last_used: float = 0.0

    @property
    def free(self) -> int:
        return self.amount - self.held - self.unwritten


@dataclass(frozen=True, slots=True)
class Draw:
    """One request's hold on a lease."""

    id: str
    lease: Lease
    amount_nanocredits: int


class LeaseBook:
    def __init__(
        self, ledger: CreditLedger, *, lease_size: int, idle_seconds: float, clock: Callable[[], float]
    ) -> None:
        self._ledger = ledger
        self._lease_size = lease_size
        self._idle_seconds = idle_seconds
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        # The grant in flight per key (one at a time): the draws that wait for it then find the lease
        # grown. A grant outlives a cancelled caller, so that what it took is known here; its entry
        # goes when it ends, so keys seen once leave nothing behind.
        self._granting: dict[str, asyncio.Task[None]] = {}
        self._charges: list[Charge] = []
        self._draw_ids = _DrawIds()
        # Writes and returns in order, so that a lease is never returned while its charges are written.
        self._writing = asyncio.Lock()
        # Leases picked for returning whose return failed: out of use, returned with the next ones.
        self._unreturned: list[Lease] = []

    async def draw(self, key_id: str, amount: int) -> Draw:
        """Holds `amount` nanocredits for a request; raises InsufficientQuotaError (the balance and
        this router's lease cannot cover it) or InvalidApiKeyError (revoked)."""
        lease = self._leases.get(key_id)
        if lease is None or lease.free < amount:
            lease = await self._grant(key_id, amount)
        lease.held += amount
        lease.running += 1
        lease.last_used = self._clock()
        return Draw(self._draw_ids.next(), lease, amount)

    def settle(self, draw: Draw | None, key_id: str, cost: int, *, request_id: str, model: str) -> None:
        """The request ended costing `cost`: its hold goes back to the lease, its charge waits for
        `write`. `draw` None: it held nothing, the charge comes out of the balance."""
        lease = draw.lease if draw is not None else None
        if draw is not None:
            lease.held -= draw.amount_nanocredits
            lease.running -= 1
            lease.unwritten += cost
            lease.last_used = self._clock()
        self._charges.append(
            Charge(
                draw.id if draw is not None else self._draw_ids.next(),
                key_id,
                lease.id if lease is not None else None,
                cost,
                request_id,
                model,
            )
        )

    @property
    def pending(self) -> int:
        """Charges settled and not written yet."""
        return len(self._charges)

    async def write(self) -> None:
        """Bills the charges settled so far, in one transaction. When the database refuses, they
        stay queued for the next write (and are never billed twice: see credits.py)."""
        async with self._writing:
            charges, self._charges = self._charges, []
            if not charges:
                return
            try:
                billed = await self._ledger.write_charges(charges)
            except Exception:
                self._charges[:0] = charges
                CHARGES_NOT_WRITTEN.inc()
                logger.exception(
                    "could not write %d credit charges; retrying with the next batch", len(charges)
                )
                return
            for charge in charges:
                lease = self._leases.get(charge.key_id)
                if lease is not None and lease.id == charge.lease_id:
                    lease.unwritten -= charge.amount_nanocredits
            for lease in self._leases.values():
                lease.amount -= billed.get(lease.id, 0)

    async def return_idle(self, *, at_once: bool = False) -> None:
        """Returns the leases that no request uses (nor a grant grows), have nothing left to write
        and (unless `at_once`) have not been drawn from for idle_seconds."""
        async with self._writing:
            now = self._clock()
            idle = [
                lease
                for lease in self._leases.values()
                if lease.running == 0
                and lease.unwritten == 0
                and (at_once or now - lease.last_used >= self._idle_seconds)
            ]
            for lease in idle:
                del self._leases[lease.key_id]
            returning, self._unreturned = self._unreturned + idle, []
            if not returning:
                return
            try:
                await self._ledger.return_leases([lease.id for lease in returning])
            except Exception:
                # Not put back in use: a draw meanwhile may have taken the key a new lease. Returning
                # again is safe, as a lease's row is released at most once.
                logger.exception("could not return %d credit leases; retrying later", len(returning))
                self._unreturned.extend(returning)

    async def refresh(self) -> None:
        """Marks this router's leases as in use, so that other routers' sweeps leave them alone
        however long a request runs on one (writing charges marks only the leases charged). A
        lease found swept already is dropped: its requests' charges are billed from the balance."""
        leases = list(self._leases.values())
        if not leases:
            return
        still_open = await self._ledger.refresh_leases([lease.id for lease in leases])
        for lease in leases:
            if lease.id not in still_open and self._leases.get(lease.key_id) is lease:
                logger.warning(
                    "credit lease %s of key %s was released by another router", lease.id, lease.key_id
                )
                del self._leases[lease.key_id]

    async def close(self) -> None:
        """Waits for grants in flight, writes every charge and returns the unused leases."""
        while self._granting:
            await asyncio.wait(list(self._granting.values()))
        await self.write()
        await self.return_idle(at_once=True)

    async def _grant(self, key_id: str, amount: int) -> Lease:
        while True:
            lease = self._leases.get(key_id)
            if lease is not None and lease.free >= amount:
                return lease
            grant = self._granting.get(key_id)
            if grant is not None:
                # Another draw's grant: its refusal is not this draw's, so wait for it, then look again.
                await asyncio.wait([grant])
                continue
            new = lease is None
            if lease is None:
                lease = Lease(str(uuid.uuid4()), key_id)
            # Counted before the task starts, so that no return_idle in between can take the lease.
            lease.running += 1
            grant = asyncio.create_task(self._take(lease, amount, new=new))
            self._granting[key_id] = grant
            grant.add_done_callback(functools.partial(self._grant_ended, key_id))
            await asyncio.shield(grant)

    def _grant_ended(self, key_id: str, grant: asyncio.Task[None]) -> None:
        if self._granting.get(key_id) is grant:
            del self._granting[key_id]

    async def _take(self, lease: Lease, amount: int, *, new: bool) -> None:
        key_id = lease.key_id
        free = max(lease.free, 0)
        need = amount - free
        try:
            taken = await self._ledger.take(
                key_id,
                lease.id,
                need=need,
                want=max(need, self._lease_size),
                new=new,
                hold=amount,
                free=free,
            )
        except LeaseLost:
            # Swept as abandoned: its running requests' charges are billed from the balance.
            logger.warning("credit lease %s of key %s was released by another router", lease.id, key_id)
            if self._leases.get(key_id) is lease:
                del self._leases[key_id]
            return
        finally:
            lease.running -= 1
        lease.amount += taken
        # Only a new lease is installed: a grown one never left (nothing returns a lease while it
        # grows), and the key has no other, as its grants run one at a time.
        if new:
            self._leases[key_id] = lease
