"""Where SQLite transactions run: a short one on the request path runs on the event loop (no
thread switches), unless the database is locked by another connection, when it waits for the lock
on the writer thread and never on the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

from sqlalchemy import text

from services.router.accounting.database import Database


async def test_a_short_transaction_runs_on_the_event_loop_unless_the_database_is_locked(tmp_path):
    path = tmp_path / "state.db"
    database = Database(f"sqlite+aiosqlite:///{path}")
    ran_on: list[str] = []

    def insert(connection) -> None:
        ran_on.append(threading.current_thread().name)
        connection.execute(text("INSERT INTO t (x) VALUES (1)"))

    try:
        await database.write(lambda connection: connection.execute(text("CREATE TABLE t (x INTEGER)")))
        await database.write(insert, inline=True)
        assert ran_on == [threading.current_thread().name], "on the event loop's own thread"

        # Another connection (the CLI, say) holds the write lock.
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        writing = asyncio.ensure_future(database.write(insert, inline=True))
        for _ in range(3):
            await asyncio.sleep(0)  # the event loop keeps running while the write waits
        assert not writing.done()
        blocker.execute("COMMIT")
        blocker.close()
        await writing
        assert ran_on[-1].startswith("sqlite-writer"), "it waited for the lock on the writer thread"

        async with database.engine.connect() as connection:
            assert (await connection.execute(text("SELECT count(*) FROM t"))).scalar() == 2
    finally:
        await database.dispose()
