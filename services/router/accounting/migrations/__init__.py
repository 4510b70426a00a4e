"""Alembic migrations of the router's state, shipped inside the package.

The router applies them at start (`upgrade(database)`, AccountingSettings.migrate_on_start); by hand:

    python -m services.router.accounting.migrations upgrade [REVISION] [--database URL]
    python -m services.router.accounting.migrations current|history [--database URL]

A new revision, from a checkout: write it under versions/ (down_revision = the current head) and
extend schema.py to match; tests/accounting/test_migrations.py fails until both agree.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from services.router.accounting.database import Database

# Any constant: PostgreSQL advisory lock that serialises routers migrating the same database at once.
_MIGRATION_LOCK_ID = 0x5357_4954_4348


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = connection
    return config


def _run(connection: Connection, action: str, revision: str | None) -> None:
    if connection.dialect.name == "postgresql":
        # Held until the transaction ends; the second router then finds the schema at head.
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
    config = alembic_config(connection)
    if action in ("upgrade", "downgrade"):
        getattr(command, action)(config, revision)
    else:
        getattr(command, action)(config)


async def run(database: Database, action: str, revision: str | None = None) -> None:
    """Runs an Alembic command (upgrade, downgrade, current, history) in one transaction."""
    async with database.engine.begin() as connection:
        await connection.run_sync(_run, action, revision)


async def upgrade(database: Database, revision: str = "head") -> None:
    await run(database, "upgrade", revision)
