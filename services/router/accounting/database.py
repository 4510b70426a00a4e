"""The one async engine of the state layer, set up per database: SQLite in WAL mode (the embedded
default) or PostgreSQL. Everything else speaks SQLAlchemy Core through `Database.engine`."""

from __future__ import annotations

from pathlib import Path

import orjson
from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert


def _json_dumps(value: object) -> str:
    return orjson.dumps(value).decode()


class Database:
    """An AsyncEngine for `url` plus what differs between the two databases."""

    def __init__(self, url: str, *, sqlite_busy_timeout: float = 30.0) -> None:
        parsed = make_url(url)
        self.url = parsed
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        connect_args: dict[str, object] = {}
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            connect_args["timeout"] = sqlite_busy_timeout
        self.engine: AsyncEngine = create_async_engine(
            parsed, connect_args=connect_args, json_serializer=_json_dumps, json_deserializer=orjson.loads
        )
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _configure_sqlite)

    def insert_ignoring_duplicates(self, table: Table) -> Insert:
        """INSERT ... ON CONFLICT DO NOTHING (a duplicate of a unique key inserts nothing), which
        both databases have; combined with RETURNING it tells whether this call won the race."""
        dialect = sqlite if self.is_sqlite else postgresql
        return dialect.insert(table).on_conflict_do_nothing()

    async def dispose(self) -> None:
        await self.engine.dispose()


def _configure_sqlite(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer and a commit is one append. synchronous=NORMAL keeps every
    # committed transaction across a process crash (kill -9); only a power loss can take the last
    # few, which is the trade every embedded WAL database makes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
