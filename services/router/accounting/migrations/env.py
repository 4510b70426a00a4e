"""Alembic's entry point. It always runs on a connection handed in by
services.router.accounting.migrations.run, which opened it on the async engine with the same
settings the router uses (SQLite pragmas included)."""

from __future__ import annotations

from alembic import context

from services.router.accounting.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run the migrations with `python -m services.router.accounting.migrations upgrade`, "
        "which opens the database connection for Alembic"
    )
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite alters tables by copying them; batch mode lets later migrations do that portably.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
