"""Credits: hold the most a request can cost before it runs, charge what it used when it ends.

Every change of a balance is a row in the append-only `credit_ledger`, written in the same
transaction as the balance update, so the balance always equals the sum of its key's rows.

Holds are taken through credit leases, so that a request's hold and settlement touch no database.
A router takes a block of a key's credits (a lease) in one transaction and draws each request's
hold from it in memory (leases.py); the charges of finished requests are written in batches. The
ledger rows, for the key:

    top_up      +amount   credits added
    reservation -taken    a lease taken or grown by `taken` (reservation_id: that grant's id)
    settlement  -charge   one request's bill (reservation_id: the request's draw, request_id: its id)
    release     +charges  the charges of a batch, paid out of the lease (net zero with them)
    release     +rest     the lease returned, whatever of it was not charged (reservation_id: the
                          lease's id), when idle, at shutdown, or at reconcile after a crash

`open_reservations` holds each lease's open amount (taken - charges written), so that it is
returned exactly once: one transaction deletes the row and releases its amount. Once every lease is
returned, balance = top-ups - settlements, exactly. A unique (reservation_id, kind) makes a second
settlement of the same draw impossible, even when a batch is written again after a failure.

Balance updates are single statements (`balance = balance - x WHERE balance >= x`): PostgreSQL
re-checks the condition under the row lock and SQLite runs one writer at a time, so concurrent
grants can never take a balance below zero, and a draw never exceeds what its lease holds.

A crash (kill -9) leaves this router's leases open, with the charges of the last batch unwritten.
`release_abandoned` at the next start returns each lease's open amount, and bills nothing more: a
request whose bill the router never wrote has no usage it can prove, so the customer is not
charged for it (lost revenue is bounded by the requests in flight and the last batch). A charge of
a lease that was swept meanwhile is still billed, straight from the balance.

The transactions are plain functions of a synchronous Connection, run by `Database.write`.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Connection, and_, bindparam, delete, insert, or_, select, update

from services.common.errors import InsufficientQuotaError, InvalidApiKeyError
from services.router.accounting import schema
from services.router.accounting.database import Database
from services.router.accounting.pricing import nanocredits_to_credits

_keys = schema.api_keys
_ledger = schema.credit_ledger
_open = schema.open_reservations

# The statements, built once: building one per call costs more than SQLite running it.
_INSERT_LEDGER = insert(_ledger)
_INSERT_OPEN = insert(_open)
_ADD_TO_BALANCE = (
    update(_keys)
    .where(_keys.c.id == bindparam("key"))
    .values(balance_nanocredits=_keys.c.balance_nanocredits + bindparam("amount"))
)
_TAKE = (
    update(_keys)
    .where(
        _keys.c.id == bindparam("key"),
        _keys.c.balance_nanocredits >= bindparam("amount"),
        _keys.c.revoked_at.is_(None),
    )
    .values(balance_nanocredits=_keys.c.balance_nanocredits - bindparam("amount"))
)
_GROW_OPEN = (
    update(_open)
    .where(_open.c.id == bindparam("lease"))
    .values(amount_nanocredits=_open.c.amount_nanocredits + bindparam("amount"), created_at=bindparam("now"))
)
_BALANCE = select(_keys.c.balance_nanocredits, _keys.c.revoked_at).where(_keys.c.id == bindparam("key"))


@dataclass(frozen=True, slots=True)
class Charge:
    """What one finished request costs, to be written: `draw_id` makes it a settlement at most once;
    `lease_id` None when it held nothing (billed from the balance)."""

    draw_id: str
    key_id: str
    lease_id: str | None
    amount_nanocredits: int
    request_id: str
    model: str


class LeaseLost(Exception):
    """The lease's row is gone (swept by a router that took it for abandoned): take a new one."""


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
    """Leases and charges of the router instance `holder`."""

    def __init__(self, database: Database, holder: str) -> None:
        self._database = database
        self.holder = holder
        # Inserts nothing for a draw settled already (see the unique constraint) and says which were new.
        self._insert_settlements = database.insert_ignoring_duplicates(_ledger).returning(
            _ledger.c.reservation_id, _ledger.c.amount_nanocredits
        )

    async def take(
        self, key_id: str, lease_id: str, *, need: int, want: int, new: bool, hold: int, free: int
    ) -> int:
        """Moves at least `need` and at most `want` nanocredits of the key's balance into the lease
        (`new`: creates it); returns how much. `hold` and `free` (the request's hold, what the lease
        has left) only word a refusal: InsufficientQuotaError, or InvalidApiKeyError when revoked.
        LeaseLost when the lease's row is gone."""
        return await self._database.write(
            lambda connection: self._take(connection, key_id, lease_id, need, want, new, hold, free),
            inline=True,
        )

    async def write_charges(self, charges: Sequence[Charge]) -> dict[str | None, int]:
        """Bills the charges in one transaction: a settlement each, paid out of its lease (or the
        balance). Returns the nanocredits newly billed per lease id; a draw settled before is
        skipped."""
        return await self._database.write(
            lambda connection: self._write_charges(connection, charges), inline=True
        )

    async def return_leases(self, lease_ids: Sequence[str]) -> int:
        """Releases what the leases hold back to their keys' balances; returns how many were open."""
        condition = _open.c.id.in_(lease_ids)
        note = "released: lease returned"
        return await self._database.write(lambda connection: _release_where(connection, condition, note))

    async def refresh_leases(self, lease_ids: Sequence[str]) -> set[str]:
        """Marks the leases as in use now, so that no sweep takes them for abandoned; returns the
        ids still open (the others were swept already)."""
        statement = update(_open).where(_open.c.id.in_(lease_ids)).values(created_at=datetime.now(UTC))
        rows = await self._database.write(
            lambda connection: connection.execute(statement.returning(_open.c.id)).all()
        )
        return {row.id for row in rows}

    async def release_abandoned(self, *, older_than: datetime, own: bool) -> int:
        """Releases the leases no running router holds: other routers' older than `older_than`
        (a router refreshes its leases whenever it writes charges, and returns idle ones) and, with
        `own`, every lease of this instance (at start, after a crash). Returns how many."""
        condition: ColumnElement[bool] = and_(_open.c.created_at < older_than, _open.c.holder != self.holder)
        if own:
            condition = or_(condition, _open.c.holder == self.holder)
        note = "released: abandoned by its router"
        return await self._database.write(lambda connection: _release_where(connection, condition, note))

    def _take(
        self,
        connection: Connection,
        key_id: str,
        lease_id: str,
        need: int,
        want: int,
        new: bool,
        hold: int,
        free: int,
    ) -> int:
        taken = _take_from_balance(connection, key_id, need, want)
        if taken is None:
            raise _refusal(connection, key_id, hold, free)
        now = datetime.now(UTC)
        if new:
            connection.execute(
                _INSERT_OPEN,
                {
                    "id": lease_id,
                    "key_id": key_id,
                    "amount_nanocredits": taken,
                    "holder": self.holder,
                    "created_at": now,
                },
            )
        elif connection.execute(_GROW_OPEN, {"lease": lease_id, "amount": taken, "now": now}).rowcount != 1:
            raise LeaseLost(lease_id)  # rolls the take back
        connection.execute(
            _INSERT_LEDGER,
            {
                "key_id": key_id,
                "kind": "reservation",
                "amount_nanocredits": -taken,
                "reservation_id": str(uuid.uuid4()),
                "note": f"lease {lease_id}",
                "created_at": now,
            },
        )
        return taken

    def _write_charges(self, connection: Connection, charges: Sequence[Charge]) -> dict[str | None, int]:
        now = datetime.now(UTC)
        inserted = connection.execute(
            self._insert_settlements,
            [
                {
                    "key_id": charge.key_id,
                    "kind": "settlement",
                    "amount_nanocredits": -charge.amount_nanocredits,
                    "reservation_id": charge.draw_id,
                    "request_id": charge.request_id,
                    "model": charge.model,
                    "created_at": now,
                }
                for charge in charges
            ],
        ).all()
        new = {row.reservation_id for row in inserted}
        billed: dict[str | None, int] = defaultdict(int)
        key_of: dict[str | None, str] = {}
        for charge in charges:
            if charge.draw_id in new:
                billed[charge.lease_id] += charge.amount_nanocredits
                key_of[charge.lease_id] = charge.key_id
        from_balance: dict[str, int] = defaultdict(int)
        releases = []
        for lease_id, amount in billed.items():
            key_id = key_of[lease_id]
            if (
                lease_id is not None
                and connection.execute(
                    _GROW_OPEN, {"lease": lease_id, "amount": -amount, "now": now}
                ).rowcount
            ):
                # Paid out of the lease: its hold shrinks, the balance does not change.
                releases.append(
                    {
                        "key_id": key_id,
                        "kind": "release",
                        "amount_nanocredits": amount,
                        "reservation_id": str(uuid.uuid4()),
                        "note": f"charges of lease {lease_id}",
                        "created_at": now,
                    }
                )
            else:
                from_balance[key_id] += amount
        if releases:
            connection.execute(_INSERT_LEDGER, releases)
        # In key order, so that two routers lock key rows in the same order.
        for key_id in sorted(from_balance):
            _add_to_balance(connection, key_id, -from_balance[key_id])
        return dict(billed)


def _take_from_balance(connection: Connection, key_id: str, need: int, want: int) -> int | None:
    """`want` if the balance has it, else all of it when that covers `need`, else None."""
    if want > need:
        if connection.execute(_TAKE, {"key": key_id, "amount": want}).rowcount == 1:
            return want
        row = connection.execute(_BALANCE, {"key": key_id}).first()
        if row is not None and need < row.balance_nanocredits < want:
            if connection.execute(_TAKE, {"key": key_id, "amount": row.balance_nanocredits}).rowcount == 1:
                return row.balance_nanocredits
    if connection.execute(_TAKE, {"key": key_id, "amount": need}).rowcount == 1:
        return need
    return None


def _release_where(connection: Connection, condition: ColumnElement[bool], note: str) -> int:
    # DELETE ... RETURNING claims each lease once, even against a concurrent sweep.
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


def _refusal(connection: Connection, key_id: str, hold: int, free: int) -> Exception:
    row = connection.execute(_BALANCE, {"key": key_id}).first()
    if row is None or row.revoked_at is not None:
        return InvalidApiKeyError("The API key was revoked.")
    left = max(row.balance_nanocredits, 0) + max(free, 0)
    return InsufficientQuotaError(
        "You exceeded your current quota: this request may cost up to "
        f"{nanocredits_to_credits(hold):.9g} credits and the key has "
        f"{nanocredits_to_credits(left):.9g} left. Top up the key to continue."
    )
