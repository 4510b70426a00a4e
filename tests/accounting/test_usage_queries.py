"""Reading usage and the request log back: totals by day, model and customer; paginated, filtered
listing; one request by id; scope by key; model names redacted for keys that may not see them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.common.errors import InvalidRequestError, PermissionDeniedError
from services.router.accounting import RequestLogEntry
from services.router.accounting.errors import NotFoundError
from services.router.accounting.queries import RequestFilter

from .conftest import new_key

DAY_1 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY_2 = DAY_1 + timedelta(days=1)


def entry(key_id: str, request_id: str, when: datetime, **fields) -> RequestLogEntry:
    defaults = {"model": "acme/large", "provider": "acme", "prompt_tokens": 10, "completion_tokens": 5}
    return RequestLogEntry(
        request_id=request_id, key_id=key_id, created=when.timestamp(), **defaults | fields
    )


@pytest.fixture
async def keys(accounting):
    """Two customers' keys (one may see model names) and an admin key, with a logged history."""
    alice, alice_secret = await new_key(accounting, name="alice", reveal_model_names=True)
    bob, bob_secret = await new_key(accounting, name="bob")
    _, admin_secret = await new_key(accounting, name="admin", admin=True, reveal_model_names=True)
    history = [
        entry(alice, "a1", DAY_1, customer_identifier="c1", cost_nanocredits=100),
        entry(alice, "a2", DAY_1 + timedelta(minutes=1), customer_identifier="c1", cost_nanocredits=100),
        entry(
            alice,
            "a3",
            DAY_1 + timedelta(minutes=2),
            customer_identifier="c2",
            model="acme/small",
            cost_nanocredits=10,
        ),
        entry(
            alice,
            "a4",
            DAY_2,
            customer_identifier="c1",
            status_code=429,
            error_reason="RATE_LIMIT_EXCEEDED",
            prompt_tokens=0,
            completion_tokens=0,
        ),
        entry(alice, "a5", DAY_2 + timedelta(minutes=1), cached=True, cached_tokens=10),
        entry(bob, "b1", DAY_1, model="acme/large", cost_nanocredits=7),
        entry(bob, "b2", DAY_1, model="acme/small", cost_nanocredits=3),
    ]
    for item in history:
        accounting.record(item)
    await accounting.flush_log()
    return {
        "alice": await accounting.authenticate(alice_secret),
        "bob": await accounting.authenticate(bob_secret),
        "admin": await accounting.authenticate(admin_secret),
    }


async def test_usage_totals_by_day_model_and_customer(accounting, keys):
    report = await accounting.log.usage(keys["alice"])
    table = [
        (b.day.isoformat(), b.model, b.customer_identifier, b.requests, b.prompt_tokens, b.cost_nanocredits)
        for b in report.buckets
    ]
    assert table == [
        ("2026-03-01", "acme/large", "c1", 2, 20, 200),
        ("2026-03-01", "acme/small", "c2", 1, 10, 10),
        ("2026-03-02", "acme/large", "", 1, 10, 0),
        ("2026-03-02", "acme/large", "c1", 1, 0, 0),
    ]
    assert (report.total.requests, report.total.cost_nanocredits, report.total.cached_responses) == (
        5,
        210,
        1,
    )
    assert report.total.cached_tokens == 10


async def test_usage_in_a_time_range(accounting, keys):
    report = await accounting.log.usage(keys["alice"], start=DAY_2, end=DAY_2 + timedelta(days=1))
    assert report.total.requests == 2


async def test_usage_merges_models_for_keys_that_may_not_see_them(accounting, keys):
    report = await accounting.log.usage(keys["bob"])
    assert [(b.model, b.requests, b.cost_nanocredits) for b in report.buckets] == [("redacted", 2, 10)]


async def test_admins_see_every_key_or_one_and_others_only_their_own(accounting, keys):
    assert (await accounting.log.usage(keys["admin"])).total.requests == 7
    assert (await accounting.log.usage(keys["admin"], key_id=keys["bob"].key_id)).total.requests == 2
    assert (await accounting.log.usage(keys["bob"], key_id=keys["bob"].key_id)).total.requests == 2
    with pytest.raises(PermissionDeniedError):
        await accounting.log.usage(keys["bob"], key_id=keys["alice"].key_id)


async def test_listing_pages_newest_first_until_the_end(accounting, keys):
    seen, token = [], ""
    while True:
        page, token = await accounting.log.list_requests(
            keys["alice"], RequestFilter(), page_size=2, page_token=token
        )
        seen.append([r.request_id for r in page])
        if not token:
            break
    assert seen == [["a5", "a4"], ["a3", "a2"], ["a1"]]


async def test_listing_filters_by_time_customer_model_and_status(accounting, keys):
    async def ids(**filters) -> list[str]:
        page, _ = await accounting.log.list_requests(keys["alice"], RequestFilter(**filters))
        return [r.request_id for r in page]

    assert await ids(start=DAY_1, end=DAY_2) == ["a3", "a2", "a1"]
    assert await ids(customer_identifier="c1") == ["a4", "a2", "a1"]
    assert await ids(model="acme/small") == ["a3"]
    assert await ids(status_code=429) == ["a4"]
    assert await ids(customer_identifier="c1", status_code=200) == ["a2", "a1"]


async def test_listing_is_redacted_for_keys_that_may_not_see_models(accounting, keys):
    page, _ = await accounting.log.list_requests(keys["bob"], RequestFilter())
    assert {(r.model, r.provider) for r in page} == {("redacted", "")}
    with pytest.raises(InvalidRequestError):
        await accounting.log.list_requests(keys["bob"], RequestFilter(model="acme/small"))


async def test_one_request_by_id_only_for_its_key_or_an_admin(accounting, keys):
    assert (await accounting.log.get_request(keys["alice"], "a4")).error_reason == "RATE_LIMIT_EXCEEDED"
    assert (await accounting.log.get_request(keys["admin"], "b1")).key_id == keys["bob"].key_id
    with pytest.raises(NotFoundError):
        await accounting.log.get_request(keys["alice"], "b1")
    with pytest.raises(NotFoundError):
        await accounting.log.get_request(keys["alice"], "nope")


async def test_a_forged_page_token_is_an_invalid_request(accounting, keys):
    with pytest.raises(InvalidRequestError):
        await accounting.log.list_requests(keys["alice"], RequestFilter(), page_token="not-a-token")
