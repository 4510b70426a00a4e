"""The Alembic migrations build exactly the schema the code uses, on both databases, and run by
hand as well as at start."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from services.router.accounting import migrations, schema
from services.router.accounting.database import Database

REPO_ROOT = Path(__file__).resolve().parents[2]


def _differences(connection) -> list:
    return compare_metadata(
        MigrationContext.configure(connection, opts={"compare_type": True}), schema.metadata
    )


async def test_head_matches_the_schema_module(database_url):
    database = Database(database_url)
    try:
        await migrations.upgrade(database)
        async with database.engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
    finally:
        await database.dispose()


async def test_upgrade_is_idempotent_and_downgrade_removes_everything(database_url):
    database = Database(database_url)
    try:
        await migrations.upgrade(database)
        await migrations.upgrade(database)  # at head: nothing to do
        await migrations.run(database, "downgrade", "base")
        async with database.engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert tables <= {"alembic_version"}
    finally:
        await database.dispose()


async def test_the_migrations_run_by_hand(database_url):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.router.accounting.migrations",
        "upgrade",
        "--database",
        database_url,
        cwd=REPO_ROOT,
    )
    assert await process.wait() == 0
    database = Database(database_url)
    try:
        async with database.engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert {"api_keys", "credit_ledger", "open_reservations", "request_log"} <= tables
    finally:
        await database.dispose()
