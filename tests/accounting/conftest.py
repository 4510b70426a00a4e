"""Fixtures for the router's state layer. Every storage test runs against SQLite (a file per test)
and, when SWITCHYARD_TEST_POSTGRES_DSN is set (`scripts/postgres run -- ...`), against PostgreSQL
too (a database per test, dropped afterwards)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from services.router.accounting import Accounting, AccountingSettings, KeyPolicy, migrations, schema
from services.router.accounting.database import Database

POSTGRES_DSN = os.environ.get("SWITCHYARD_TEST_POSTGRES_DSN")
BACKENDS = ["sqlite", "postgresql"] if POSTGRES_DSN else ["sqlite"]


class FakeClock:
    """Monotonic time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _plain_dsn(url) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
async def postgres_template() -> AsyncIterator[str | None]:
    """A database migrated once, copied for each test: CREATE DATABASE ... TEMPLATE is much faster
    than migrating every test's database. None without a PostgreSQL server."""
    if not POSTGRES_DSN:
        yield None
        return
    server = make_url(POSTGRES_DSN)
    name = f"switchyard_template_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(_plain_dsn(server))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        template = Database(server.set(database=name).render_as_string(hide_password=False))
        await migrations.upgrade(template)
        await template.dispose()
        yield name
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(params=BACKENDS)
async def database_url(request, tmp_path, postgres_template) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
        return
    server = make_url(POSTGRES_DSN)
    name = f"switchyard_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_plain_dsn(server))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
        yield server.set(database=name).render_as_string(hide_password=False)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(database_url) -> AccountingSettings:
    return AccountingSettings(database_url=database_url, instance_name="router-under-test")


@pytest.fixture
async def accounting(settings, clock) -> AsyncIterator[Accounting]:
    accounting = Accounting(settings, clock=clock)
    await accounting.start()
    yield accounting
    await accounting.close()


@pytest.fixture
async def make_accounting(settings, clock):
    """Starts an Accounting with settings overridden (make_accounting(log_queue_size=2)); closes
    it at the end of the test."""
    made: list[Accounting] = []

    async def make(**overrides) -> Accounting:
        accounting = Accounting(settings.model_copy(update=overrides), clock=clock)
        await accounting.start()
        made.append(accounting)
        return accounting

    yield make
    for accounting in made:
        await accounting.close()


async def new_key(accounting: Accounting, credits: float = 10.0, **policy) -> tuple[str, str]:
    """Creates a key; returns (key_id, secret)."""
    record, secret = await accounting.keys.create(
        KeyPolicy(name=policy.pop("name", "test"), **policy), credits=credits
    )
    return record.key_id, secret


async def ledger_figures(database: Database, key_id: str) -> dict[str, int]:
    """Balance and ledger sums per kind, in nanocredits, straight from the tables."""
    ledger = schema.credit_ledger
    async with database.engine.connect() as connection:
        balance = (
            await connection.execute(
                select(schema.api_keys.c.balance_nanocredits).where(schema.api_keys.c.id == key_id)
            )
        ).scalar_one()
        sums = dict(
            (
                await connection.execute(
                    select(ledger.c.kind, func.sum(ledger.c.amount_nanocredits))
                    .where(ledger.c.key_id == key_id)
                    .group_by(ledger.c.kind)
                )
            ).all()
        )
        counts = dict(
            (
                await connection.execute(
                    select(ledger.c.kind, func.count())
                    .where(ledger.c.key_id == key_id)
                    .group_by(ledger.c.kind)
                )
            ).all()
        )
        held_amount = func.coalesce(func.sum(schema.open_reservations.c.amount_nanocredits), 0)
        open_holds, held = (
            await connection.execute(
                select(func.count(), held_amount)
                .select_from(schema.open_reservations)
                .where(schema.open_reservations.c.key_id == key_id)
            )
        ).one()
    return {
        "balance": balance,
        "top_up": int(sums.get("top_up", 0)),
        "reservation": int(sums.get("reservation", 0)),
        "release": int(sums.get("release", 0)),
        "settlement": int(sums.get("settlement", 0)),
        "reservations": counts.get("reservation", 0),
        "releases": counts.get("release", 0),
        "settlements": counts.get("settlement", 0),
        "open_holds": open_holds,
        # What the open leases hold.
        "held": int(held),
    }


def assert_exact_ledger(figures: dict[str, int]) -> None:
    """No lease open, all that was taken released (paid out as charges, or returned), balance =
    top-ups - settled charges, to the unit."""
    assert figures["open_holds"] == 0
    assert figures["reservation"] + figures["release"] == 0
    assert figures["balance"] == figures["top_up"] + figures["settlement"]
