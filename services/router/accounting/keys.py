"""API keys: made once, shown once, stored as a SHA-256 with a visible prefix.

A key is 32 random bytes (`sy-` + 43 URL-safe characters), so a plain SHA-256 is the right hash: a
slow password hash protects guessable secrets, and these are not guessable, while the hot path
hashes every request's key.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, RowMapping, select, update

from services.common.errors import InvalidRequestError
from services.router.accounting import schema
from services.router.accounting.credits import record_top_up
from services.router.accounting.database import Database
from services.router.accounting.errors import NotFoundError
from services.router.accounting.pricing import credits_to_nanocredits

SECRET_PREFIX = "sy-"
# "sy-" and 8 random characters: enough to tell keys apart, too little to matter to an attacker.
_VISIBLE_CHARS = 11


def generate_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def visible_prefix(secret: str) -> str:
    """What lists show of a key. A key chosen by hand (`switchyard up --api-key`) may be short, so
    never more than a third of it."""
    return secret[: min(_VISIBLE_CHARS, len(secret) // 3)]


def model_allowed(allowed: frozenset[str], model: str) -> bool:
    """Empty means every model; an entry is a model id, or an id without ":version" (all versions)."""
    return not allowed or model in allowed or model.partition(":")[0] in allowed


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is for: what the router needs on the hot path, cached in memory."""

    key_id: str
    name: str
    allowed_models: frozenset[str] = frozenset()
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    reveal_model_names: bool = False
    admin: bool = False

    def may_use(self, model: str) -> bool:
        return model_allowed(self.allowed_models, model)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as administrators see it."""

    principal: Principal
    prefix: str
    balance_nanocredits: int
    created_at: datetime
    revoked_at: datetime | None

    @property
    def key_id(self) -> str:
        return self.principal.key_id


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """What a new key may do."""

    name: str
    allowed_models: tuple[str, ...] = ()
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    reveal_model_names: bool = False
    admin: bool = False

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise InvalidRequestError("A key needs a name.", param="name")
        for field_name in ("requests_per_minute", "tokens_per_minute", "max_concurrent_requests"):
            value = getattr(self, field_name)
            if value is not None and value < 1:
                raise InvalidRequestError(
                    f"{field_name} must be at least 1 (unset: no limit).", param=field_name
                )


def _principal(row: RowMapping) -> Principal:
    return Principal(
        key_id=row["id"],
        name=row["name"],
        allowed_models=frozenset(row["allowed_models"]),
        requests_per_minute=row["requests_per_minute"],
        tokens_per_minute=row["tokens_per_minute"],
        max_concurrent_requests=row["max_concurrent_requests"],
        reveal_model_names=row["reveal_model_names"],
        admin=row["admin"],
    )


def _record(row: RowMapping) -> KeyRecord:
    return KeyRecord(
        principal=_principal(row),
        prefix=row["prefix"],
        balance_nanocredits=row["balance_nanocredits"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


class KeyStore:
    """Creating, finding, listing, revoking and topping up keys."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def create(
        self, policy: KeyPolicy, *, credits: float = 0.0, secret: str | None = None
    ) -> tuple[KeyRecord, str]:
        """A new key with `credits` (recorded as a top-up). Returns it and its secret, which
        exists nowhere else from now on."""
        if credits < 0:
            raise InvalidRequestError("Initial credits cannot be negative.", param="credits")
        secret = secret or generate_secret()
        key_id = "key_" + secrets.token_hex(8)
        now = datetime.now(UTC)
        amount = credits_to_nanocredits(credits)

        def insert_key(connection: Connection) -> None:
            connection.execute(
                schema.api_keys.insert().values(
                    id=key_id,
                    name=policy.name,
                    secret_sha256=hash_secret(secret),
                    prefix=visible_prefix(secret),
                    balance_nanocredits=0,
                    allowed_models=sorted(set(policy.allowed_models)),
                    requests_per_minute=policy.requests_per_minute,
                    tokens_per_minute=policy.tokens_per_minute,
                    max_concurrent_requests=policy.max_concurrent_requests,
                    reveal_model_names=policy.reveal_model_names,
                    admin=policy.admin,
                    created_at=now,
                )
            )
            if amount:
                record_top_up(connection, key_id, amount, note="initial credits")

        await self._database.write(insert_key)
        return await self.get(key_id), secret

    async def ensure(self, secret: str, policy: KeyPolicy, *, credits: float) -> KeyRecord:
        """The key with this secret exists, is not revoked and holds at least `credits`; made or
        topped up as needed (`switchyard up --api-key KEY`)."""
        existing = await self._find(hash_secret(secret))
        if existing is None:
            record, _ = await self.create(policy, credits=credits, secret=secret)
            return record
        if existing.revoked_at is not None:
            raise InvalidRequestError(
                f"The key {existing.key_id} was revoked; choose another.", param="api_key"
            )
        shortfall = credits_to_nanocredits(credits) - existing.balance_nanocredits
        if shortfall > 0:
            note = "topped up to the ensured credits"
            await self._database.write(lambda c: record_top_up(c, existing.key_id, shortfall, note=note))
        return await self.get(existing.key_id)

    async def principal_for(self, secret_sha256: str) -> Principal | None:
        """The active (not revoked) key with this hash, or None."""
        record = await self._find(secret_sha256)
        if record is None or record.revoked_at is not None:
            return None
        return record.principal

    async def get(self, key_id: str) -> KeyRecord:
        async with self._database.engine.connect() as connection:
            row = (
                (await connection.execute(select(schema.api_keys).where(schema.api_keys.c.id == key_id)))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFoundError(f"No key with id '{key_id}'.")
        return _record(row)

    async def list(self, *, show_revoked: bool = False) -> list[KeyRecord]:
        query = select(schema.api_keys).order_by(schema.api_keys.c.created_at, schema.api_keys.c.id)
        if not show_revoked:
            query = query.where(schema.api_keys.c.revoked_at.is_(None))
        async with self._database.engine.connect() as connection:
            rows = (await connection.execute(query)).mappings().all()
        return [_record(row) for row in rows]

    async def revoke(self, key_id: str) -> KeyRecord:
        """Revoked keys stay in the table (the ledger and the log refer to them); revoking twice
        keeps the first time."""
        revoke = (
            update(schema.api_keys)
            .where(schema.api_keys.c.id == key_id, schema.api_keys.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
        await self._database.write(lambda connection: connection.execute(revoke))
        return await self.get(key_id)

    async def top_up(self, key_id: str, credits: float) -> KeyRecord:
        amount = credits_to_nanocredits(credits)
        if amount <= 0:
            raise InvalidRequestError("A top-up must add a positive amount of credits.", param="credits")
        await self.get(key_id)
        await self._database.write(
            lambda connection: record_top_up(connection, key_id, amount, note="top-up")
        )
        return await self.get(key_id)

    async def _find(self, secret_sha256: str) -> KeyRecord | None:
        query = select(schema.api_keys).where(schema.api_keys.c.secret_sha256 == secret_sha256)
        async with self._database.engine.connect() as connection:
            row = (await connection.execute(query)).mappings().first()
        return None if row is None else _record(row)
