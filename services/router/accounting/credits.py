"""Credits: hold the most a request can cost before it runs, charge what it used when it ends.

Every change of a balance is a row in the append-only `credit_ledger`, written in the same
transaction as the balance update, so the balance always equals the sum of its key's rows:

    top_up      +amount   credits added
    reservation -held     the most the request can cost, held before dispatch
    release     +held     the hold returned, in full, when the request ends (or is abandoned)
    settlement  -charge   what the request used, billed

Once every reservation is released, balance = top-ups - settlements, exactly. A unique
(reservation_id, kind) makes a second settlement of the same request impossible, and an open hold
lives in `open_reservations` until one transaction deletes it, so it is released exactly once.

Balance updates are single statements (`balance = balance - x WHERE balance >= x`): PostgreSQL
re-checks the condition under the row lock and SQLite runs one writer at a time, so concurrent
reservations can never take a balance below zero.

A crash (kill -9) leaves the holds of the requests that were running. `release_abandoned` at the
next start returns them, and bills nothing: a request whose end the router never saw has no usage
it can prove, so the customer is not charged for it (lost revenue is bounded by the requests in
flight at the crash). A request that does finish after its hold was swept is still billed: its
settlement finds no hold to release and charges the usage alone.

The transactions are plain functions of a synchronous Connection, run by `Database.write`.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Connection, bindparam, delete, insert, or_, select, update

from services.common.errors import InsufficientQuotaError, InvalidApiKeyError
from services.router.accounting import schema
from services.router.accounting.database import Database
from services.router.accounting.pricing import nanocredits_to_credits

_keys = schema.api_keys
_ledger = schema.credit_ledger
_open = schema.open_reservations

# The hot path's statements, built once: building one per call costs more than SQLite running it.
_INSERT_LEDGER = insert(_ledger)
_INSERT_OPEN = insert(_open)
_ADD_TO_BALANCE = (
    update(_keys)
    .where(_keys.c.id == bindparam("key"))
    .values(balance_nanocredits=_keys.c.balance_nanocredits + bindparam("amount"))
)
_HOLD = (
    update(_keys)
    .where(
        _keys.c.id == bindparam("key"),
        _keys.c.balance_nanocredits >= bindparam("amount"),
        _keys.c.revoked_at.is_(None),
    )
    .values(balance_nanocredits=_keys.c.balance_nanocredits - bindparam("amount"))
)
_CLAIM_HOLD = (
    delete(_open).where(_open.c.id == bindparam("reservation")).returning(_open.c.amount_nanocredits)
)


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    key_id: str
    amount_nanocredits: int
    request_id: str
    model: str


def unreserved(key_id: str, request_id: str, model: str) -> Reservation:
    """Stands for a request that needed no hold (a free model or cache hit) in case its usage
    still costs something at settlement."""
    return Reservation(str(uuid.uuid4()), key_id, 0, request_id, model)


def record_top_up(connection: Connection, key_id: str, amount_nanocredits: int, *, note: str) -> None:
    _add_to_balance(connection, key_id, amount_nanocredits)
    connection.execute(
        _INSERT_LEDGER,
        {
            "key_id": key_id,
            "kind": "top_up",
            "amount_nanocredits": amount_nanocredits,
            "note": note,
            "created_at": datetime.now(UTC),
        },
    )


def _add_to_balance(connection: Connection, key_id: str, amount_nanocredits: int) -> None:
    connection.execute(_ADD_TO_BALANCE, {"key": key_id, "amount": amount_nanocredits})


class CreditLedger:
    """Reservations, settlements and releases for the router instance `holder`."""

    def __init__(self, database: Database, holder: str) -> None:
        self._database = database
        self.holder = holder
        # Inserts nothing when this reservation was settled already (see the unique constraint).
        self._insert_settlement = database.insert_ignoring_duplicates(_ledger).returning(_ledger.c.id)

    async def reserve(
        self, key_id: str, amount_nanocredits: int, *, request_id: str, model: str
    ) -> Reservation:
        """Holds `amount_nanocredits` of the key's balance, or raises InsufficientQuotaError."""
        reservation = Reservation(str(uuid.uuid4()), key_id, amount_nanocredits, request_id, model)
        await self._database.write(lambda connection: self._reserve(connection, reservation), inline=True)
        return reservation

    async def settle(self, reservation: Reservation, charge_nanocredits: int) -> bool:
        """Bills `charge_nanocredits` and releases the reservation's hold, in one transaction.
        False (and no change) when this reservation was settled before."""
        return await self._database.write(
            lambda connection: self._settle(connection, reservation, charge_nanocredits), inline=True
        )

    async def release(self, reservation: Reservation, *, note: str) -> bool:
        """Returns a hold without billing anything (the request never ran). False when it was
        settled or released already."""
        condition = _open.c.id == reservation.id
        return await self._database.write(lambda connection: _release_where(connection, condition, note)) == 1

    async def release_abandoned(self, *, older_than: datetime, own: bool) -> int:
        """Releases the holds no running request owns: those older than `older_than` (no request
        lives that long) and, with `own`, every hold of this instance (at start, after a crash).
        Returns how many were released."""
        condition = _open.c.created_at < older_than
        if own:
            condition = or_(condition, _open.c.holder == self.holder)
        note = "released: abandoned by its router"
        return await self._database.write(lambda connection: _release_where(connection, condition, note))

    def _reserve(self, connection: Connection, reservation: Reservation) -> None:
        now = datetime.now(UTC)
        connection.execute(
            _INSERT_LEDGER,
            {
                "key_id": reservation.key_id,
                "kind": "reservation",
                "amount_nanocredits": -reservation.amount_nanocredits,
                "reservation_id": reservation.id,
                "request_id": reservation.request_id,
                "model": reservation.model,
                "created_at": now,
            },
        )
        connection.execute(
            _INSERT_OPEN,
            {
                "id": reservation.id,
                "key_id": reservation.key_id,
                "amount_nanocredits": reservation.amount_nanocredits,
                "request_id": reservation.request_id,
                "holder": self.holder,
                "created_at": now,
            },
        )
        # The balance last: on PostgreSQL its row lock, which every request of the key needs, is
        # then held only until the commit. A refusal rolls the two inserts back.
        held = connection.execute(
            _HOLD, {"key": reservation.key_id, "amount": reservation.amount_nanocredits}
        )
        if held.rowcount != 1:
            raise _refusal(connection, reservation)

    def _settle(self, connection: Connection, reservation: Reservation, charge_nanocredits: int) -> bool:
        common = {
            "key_id": reservation.key_id,
            "reservation_id": reservation.id,
            "request_id": reservation.request_id,
            "model": reservation.model,
            "created_at": datetime.now(UTC),
        }
        settled = connection.execute(
            self._insert_settlement,
            common | {"kind": "settlement", "amount_nanocredits": -charge_nanocredits},
        )
        if settled.first() is None:
            return False
        held = connection.execute(_CLAIM_HOLD, {"reservation": reservation.id}).scalar()
        if held is not None:
            connection.execute(_INSERT_LEDGER, common | {"kind": "release", "amount_nanocredits": held})
        change = (held or 0) - charge_nanocredits
        if change:
            _add_to_balance(connection, reservation.key_id, change)
        return True


def _release_where(connection: Connection, condition: ColumnElement[bool], note: str) -> int:
    # DELETE ... RETURNING claims each hold once, even against a concurrent settlement.
    rows = connection.execute(
        delete(_open)
        .where(condition)
        .returning(_open.c.id, _open.c.key_id, _open.c.amount_nanocredits, _open.c.request_id)
    ).all()
    if not rows:
        return 0
    now = datetime.now(UTC)
    connection.execute(
        _INSERT_LEDGER,
        [
            {
                "key_id": row.key_id,
                "kind": "release",
                "amount_nanocredits": row.amount_nanocredits,
                "reservation_id": row.id,
                "request_id": row.request_id,
                "note": note,
                "created_at": now,
            }
            for row in rows
        ],
    )
    per_key: dict[str, int] = defaultdict(int)
    for row in rows:
        per_key[row.key_id] += row.amount_nanocredits
    # In key order, so that two routers releasing at once lock rows in the same order.
    for key_id in sorted(per_key):
        _add_to_balance(connection, key_id, per_key[key_id])
    return len(rows)


def _refusal(connection: Connection, reservation: Reservation) -> Exception:
    row = connection.execute(
        select(_keys.c.balance_nanocredits, _keys.c.revoked_at).where(_keys.c.id == reservation.key_id)
    ).first()
    if row is None or row.revoked_at is not None:
        return InvalidApiKeyError("The API key was revoked.")
    return InsufficientQuotaError(
        "You exceeded your current quota: this request may cost up to "
        f"{nanocredits_to_credits(reservation.amount_nanocredits):.9g} credits and the key has "
        f"{nanocredits_to_credits(max(row.balance_nanocredits, 0)):.9g} left. Top up the key to continue."
    )
