"""API keys: created once, stored hashed, found by the hot path from memory, revoked, topped up."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, update

from services.common.errors import InvalidApiKeyError, InvalidRequestError
from services.router.accounting import KeyPolicy, bearer_key, schema
from services.router.accounting.errors import NotFoundError
from services.router.accounting.keys import model_allowed, visible_prefix

from .conftest import ledger_figures, new_key


async def test_a_new_key_authenticates_and_carries_its_policy(accounting):
    record, secret = await accounting.keys.create(
        KeyPolicy(
            name="ci",
            allowed_models=("meta/llama-3.1-8b",),
            requests_per_minute=60,
            tokens_per_minute=10_000,
            max_concurrent_requests=4,
            reveal_model_names=True,
        ),
        credits=2.5,
    )
    assert secret.startswith("sy-") and len(secret) > 40
    assert record.prefix == secret[:11]
    assert record.balance_nanocredits == 2_500_000_000

    principal = await accounting.authenticate(secret)
    assert principal.key_id == record.key_id
    assert principal.requests_per_minute == 60
    assert principal.tokens_per_minute == 10_000
    assert principal.max_concurrent_requests == 4
    assert principal.reveal_model_names and not principal.admin
    assert principal.may_use("meta/llama-3.1-8b") and not principal.may_use("meta/llama-3.1-70b")


async def test_the_secret_is_stored_only_as_its_sha256(accounting):
    _, secret = await accounting.keys.create(KeyPolicy(name="hashed"))
    async with accounting.database.engine.connect() as connection:
        row = (await connection.execute(select(schema.api_keys))).mappings().one()
    assert row["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert all(secret not in str(value) for value in row.values())
    assert all(secret not in repr(r) for r in await accounting.keys.list())


async def test_unknown_and_missing_keys_are_refused(accounting):
    with pytest.raises(InvalidApiKeyError):
        await accounting.authenticate("sy-not-a-key")
    with pytest.raises(InvalidApiKeyError):
        await accounting.authenticate_metadata([("x-request-id", "r1")])
    with pytest.raises(InvalidApiKeyError):
        bearer_key([("authorization", "Basic abc")])
    assert bearer_key([("authorization", "Bearer sy-abc ")]) == "sy-abc"


async def test_key_checks_are_served_from_memory_until_the_cache_expires(accounting, clock):
    key_id, secret = await new_key(accounting)
    await accounting.authenticate(secret)
    # Revoked behind this router's back (the CLI, another router): the cached answer stands ...
    async with accounting.database.engine.begin() as connection:
        await connection.execute(
            update(schema.api_keys).where(schema.api_keys.c.id == key_id).values(revoked_at=datetime.now(UTC))
        )
    assert (await accounting.authenticate(secret)).key_id == key_id
    # ... for at most key_cache_seconds.
    clock.advance(accounting.settings.key_cache_seconds + 0.1)
    with pytest.raises(InvalidApiKeyError):
        await accounting.authenticate(secret)


async def test_unknown_keys_are_remembered_briefly_too(accounting, clock):
    # A flood of wrong keys must not become a flood of queries: the refusal is cached ...
    with pytest.raises(InvalidApiKeyError):
        await accounting.authenticate("sy-made-later-0123456789")
    await accounting.keys.create(KeyPolicy(name="late"), secret="sy-made-later-0123456789")
    with pytest.raises(InvalidApiKeyError):
        await accounting.authenticate("sy-made-later-0123456789")
    # ... as briefly as the answers for known keys.
    clock.advance(accounting.settings.key_cache_seconds + 0.1)
    assert (await accounting.authenticate("sy-made-later-0123456789")).name == "late"


async def test_revoke_list_and_top_up(accounting):
    keep_id, _ = await new_key(accounting, name="keep", credits=1)
    gone_id, gone_secret = await new_key(accounting, name="gone", credits=1)
    await accounting.authenticate(gone_secret)

    revoked = await accounting.keys.revoke(gone_id)
    assert revoked.revoked_at is not None
    again = await accounting.keys.revoke(gone_id)
    assert again.revoked_at == revoked.revoked_at
    accounting.forget_keys()
    with pytest.raises(InvalidApiKeyError):
        await accounting.authenticate(gone_secret)

    assert [r.key_id for r in await accounting.keys.list()] == [keep_id]
    assert {r.key_id for r in await accounting.keys.list(show_revoked=True)} == {keep_id, gone_id}

    topped = await accounting.keys.top_up(keep_id, 0.25)
    assert topped.balance_nanocredits == 1_250_000_000
    figures = await ledger_figures(accounting.database, keep_id)
    assert figures["top_up"] == figures["balance"] == 1_250_000_000

    with pytest.raises(InvalidRequestError):
        await accounting.keys.top_up(keep_id, 0)
    with pytest.raises(NotFoundError):
        await accounting.keys.top_up("key_missing", 1)


async def test_policies_are_validated():
    with pytest.raises(InvalidRequestError):
        KeyPolicy(name=" ")
    with pytest.raises(InvalidRequestError):
        KeyPolicy(name="x", requests_per_minute=0)


async def test_ensure_makes_the_key_once_and_keeps_it_funded(accounting):
    first = await accounting.keys.ensure("my-local-key-123", KeyPolicy(name="up", admin=True), credits=100)
    assert first.balance_nanocredits == 100 * 10**9
    assert first.principal.admin
    # A short hand-picked key shows at most a third of itself.
    assert first.prefix == visible_prefix("my-local-key-123") == "my-lo"

    await accounting.keys.top_up(first.key_id, 5)
    again = await accounting.keys.ensure("my-local-key-123", KeyPolicy(name="up"), credits=100)
    assert again.key_id == first.key_id
    assert again.balance_nanocredits == 105 * 10**9  # already above 100: no top-up
    assert len(await accounting.keys.list()) == 1


def test_allowed_models_match_ids_or_every_version_of_an_id():
    allowed = frozenset({"meta/llama", "mistral/small:2"})
    assert model_allowed(allowed, "meta/llama:3")
    assert model_allowed(allowed, "mistral/small:2")
    assert not model_allowed(allowed, "mistral/small:3")
    assert model_allowed(frozenset(), "anything/at-all")
