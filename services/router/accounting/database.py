"""The state layer's database: SQLite in WAL mode (the embedded default) or PostgreSQL.

Reads go through the async engine (`Database.engine`). Writes go through `Database.write(fn)`,
which runs `fn(connection)` as one transaction with SQLAlchemy's synchronous Connection API:

- SQLite: on one dedicated writer thread with its own pysqlite connection. aiosqlite would hop
  threads for every statement (a reservation is five hops, ~1.6 ms measured here); this is one hop
  per transaction, and one writer means this router's transactions never wait in SQLite's
  busy-handler sleeps for each other. A short transaction on the request path (`inline=True`: a
  credit hold, a settlement) runs on the event loop itself instead when nothing is queued for the
  writer thread and no other connection holds the write lock: the GIL serialises the work either
  way, and the two thread switches of a hop cost more than the work on a machine whose cores are
  busy (a hold and its settlement, measured here: 0.28 ms of CPU inline on a connection held open,
  0.62 ms through the thread). When the lock is taken (the CLI, a log batch) it falls
  back to the writer thread, which waits for the lock as long as sqlite_busy_timeout; the event
  loop never waits for it.
- PostgreSQL: on the async engine (`AsyncConnection.run_sync`), concurrently, as the server
  handles concurrent writers itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import orjson
from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

T = TypeVar("T")


def _json_dumps(value: object) -> str:
    return orjson.dumps(value).decode()


class Database:
    def __init__(self, url: str, *, sqlite_busy_timeout: float = 30.0) -> None:
        parsed = make_url(url)
        self.url = parsed
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        json = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}
        connect_args: dict[str, object] = {}
        self._sync_engine: Engine | None = None
        self._inline_engine: Engine | None = None
        # Held open: only the event loop's thread uses it, so pool checkouts would be pure overhead.
        self._inline_connection: Connection | None = None
        self._writer: ThreadPoolExecutor | None = None
        # Transactions handed to the writer thread and not finished yet.
        self._queued = 0
        if self.is_sqlite:
            if not parsed.database or parsed.database == ":memory:":
                raise ValueError("SQLite needs a file: the writer thread and the readers share it")
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            pysqlite = parsed.set(drivername="sqlite+pysqlite")
            # Other processes (the CLI, a second router by mistake) still wait for the lock.
            connect_args["timeout"] = sqlite_busy_timeout
            self._sync_engine = create_engine(pysqlite, connect_args=connect_args, **json)
            event.listen(self._sync_engine, "connect", _configure_sqlite)
            # On the event loop, never wait for the lock: hand the transaction to the thread instead.
            self._inline_engine = create_engine(pysqlite, connect_args={"timeout": 0}, **json)
            event.listen(self._inline_engine, "connect", _configure_inline_sqlite)
        self.engine: AsyncEngine = create_async_engine(parsed, connect_args=connect_args, **json)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _configure_sqlite)

    @property
    def write_engine(self) -> Engine:
        """The Engine whose connections run `write` transactions (to listen to their events);
        on SQLite they run on the writer thread."""
        return self._sync_engine if self._sync_engine is not None else self.engine.sync_engine

    async def write(self, transaction: Callable[[Connection], T], *, inline: bool = False) -> T:
        """Runs `transaction(connection)` in one transaction and returns its result. If the caller
        is cancelled meanwhile, the transaction still commits or rolls back as a whole. `inline`:
        a few statements on the request path, which SQLite may run on the event loop (see the
        module docstring)."""
        if not self.is_sqlite:
            async with self.engine.begin() as connection:
                return await connection.run_sync(transaction)
        if inline and not self._queued:
            if self._inline_connection is None:
                assert self._inline_engine is not None
                self._inline_connection = self._inline_engine.connect()
            connection = self._inline_connection
            try:
                with connection.begin():
                    return transaction(connection)
            except OperationalError as error:
                if not _locked(error):
                    raise
                # Rolled back whole: the writer thread runs it again once it gets the lock.
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        # Counted on the event loop only: a decrement on the writer thread could lose an update
        # against the loop's increment and leave the count above zero, disabling the inline path.
        # A cancelled caller stops counting its transaction early, which at worst runs one inline
        # transaction beside it: the lock then sends that one to the thread too.
        self._queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._writer, self._write_sqlite, transaction
            )
        finally:
            self._queued -= 1

    def _write_sqlite(self, transaction: Callable[[Connection], T]) -> T:
        assert self._sync_engine is not None
        with self._sync_engine.begin() as connection:
            return transaction(connection)

    def insert_ignoring_duplicates(self, table: Table) -> Insert:
        """INSERT ... ON CONFLICT DO NOTHING (a duplicate of a unique key inserts nothing), which
        both databases have; combined with RETURNING it tells whether this call won the race."""
        dialect = sqlite if self.is_sqlite else postgresql
        return dialect.insert(table).on_conflict_do_nothing()

    async def dispose(self) -> None:
        """Closes the connections (like AsyncEngine.dispose, the database stays usable)."""
        if self._writer is not None:
            # Lets queued transactions finish: they may be settlements.
            await asyncio.get_running_loop().run_in_executor(None, self._writer.shutdown)
            self._writer = None
        if self._inline_connection is not None:
            self._inline_connection.close()
            self._inline_connection = None
        for engine in (self._sync_engine, self._inline_engine):
            if engine is not None:
                engine.dispose()
        await self.engine.dispose()


def _locked(error: OperationalError) -> bool:
    """SQLITE_BUSY: another connection holds the write lock."""
    return "database is locked" in str(error.orig)


def _configure_sqlite(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer and a commit is one append. synchronous=NORMAL keeps every
    # committed transaction across a process crash (kill -9); only a power loss can take the last
    # few, which is the trade every embedded WAL database makes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _configure_inline_sqlite(dbapi_connection, record) -> None:
    _configure_sqlite(dbapi_connection, record)
    # A checkpoint copies the WAL into the database file and syncs it: never on the event loop.
    # The writer thread's commits (the request log's batches) checkpoint as usual.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()
