"""The tables, as SQLAlchemy Core metadata. The migrations in migrations/versions create exactly
these (tests/accounting/test_migrations.py compares them), so change both together.

- api_keys: one row per key; the secret only as its SHA-256, the balance in nanocredits.
- credit_ledger: append-only; every change of a balance is one row, so the balance always equals
  the sum of its key's rows (kinds: top_up +, reservation -, release +, settlement -).
- open_reservations: credits held for requests still running, deleted when settled or released;
  what `reconcile` finds after a crash without scanning the whole ledger.
- request_log: one row per request, written in batches off the request path.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases: PostgreSQL's timestamptz, and on SQLite the
    naive UTC text that sorts and compares in time order (SQLite has no time zone type)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite makes only an INTEGER PRIMARY KEY an auto-incrementing rowid alias.
AutoId = BigInteger().with_variant(Integer(), "sqlite")

# Deterministic constraint names, so that later migrations can name what they alter.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("secret_sha256", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("balance_nanocredits", BigInteger, nullable=False),
    Column("allowed_models", JSON, nullable=False),
    Column("requests_per_minute", Integer),
    Column("tokens_per_minute", Integer),
    Column("max_concurrent_requests", Integer),
    Column("reveal_model_names", Boolean, nullable=False),
    Column("admin", Boolean, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime),
)

LEDGER_KINDS = ("top_up", "reservation", "release", "settlement")

credit_ledger = Table(
    "credit_ledger",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("key_id", String(32), ForeignKey("api_keys.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    # The change of the balance: positive for top-ups and releases, negative otherwise.
    Column("amount_nanocredits", BigInteger, nullable=False),
    # Ties a reservation to its release and settlement; empty for top-ups.
    Column("reservation_id", String(36)),
    Column("request_id", String(128)),
    Column("model", String(200)),
    Column("note", String(200)),
    Column("created_at", UtcDateTime, nullable=False),
    CheckConstraint(f"kind IN ({', '.join(repr(k) for k in LEDGER_KINDS)})", name="kind"),
    # At most one reservation, release and settlement per reservation id: nothing charged twice.
    UniqueConstraint("reservation_id", "kind"),
    Index(None, "key_id", "id"),
)

open_reservations = Table(
    "open_reservations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("key_id", String(32), ForeignKey("api_keys.id"), nullable=False),
    Column("amount_nanocredits", BigInteger, nullable=False),
    Column("request_id", String(128)),
    # The router instance that holds it (AccountingSettings.instance_name).
    Column("holder", String(200), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Index(None, "holder"),
    Index(None, "created_at"),
)

request_log = Table(
    "request_log",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False),
    Column("key_id", String(32), ForeignKey("api_keys.id"), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    # The UTC day of created_at, stored so that usage groups by day the same way on both databases.
    Column("day", Date, nullable=False),
    Column("customer_identifier", String(256), nullable=False),
    Column("request_metadata", JSON),
    Column("model", String(200), nullable=False),
    Column("provider", String(100), nullable=False),
    Column("category", String(50), nullable=False),
    Column("difficulty", Float),
    Column("preference", String(20), nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False),
    Column("cost_nanocredits", BigInteger, nullable=False),
    Column("latency", Float),
    Column("time_to_first_token", Float),
    Column("routing_time", Float),
    Column("status_code", Integer, nullable=False),
    Column("error_reason", String(64), nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("fallbacks_used", JSON, nullable=False),
    Column("cached", Boolean, nullable=False),
    # The switchyard.inference.v1.GenerationInput as serialized protobuf: a few microseconds to
    # write on the event loop, where JSON would cost a hundred; rendered as JSON when read back.
    # NULL (with completions) when the request set disable_log.
    Column("request_proto", LargeBinary),
    Column("completions", JSON),
    Column("log_disabled", Boolean, nullable=False),
    Index(None, "key_id", "created_at"),
    Index(None, "created_at"),
    Index(None, "request_id"),
)
