"""Credits: hold the most a request can cost, bill what it used, return the rest; never overspend,
never bill twice, and keep balance = top-ups - settled charges."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from services.common.errors import (
    InsufficientQuotaError,
    InvalidApiKeyError,
    PermissionDeniedError,
    RateLimitExceededError,
)
from services.router.accounting import FREE, Charge, Prices, schema
from services.router.accounting.credits import Charge as LedgerCharge
from services.router.accounting.credits import CreditLedger
from services.router.accounting.leases import LeaseBook
from switchyard.inference.v1 import inference_pb2

from .conftest import assert_exact_ledger, ledger_figures, new_key

# 1000 and 2000 credits per million tokens: 0.001 and 0.002 credits (10^6, 2 * 10^6 nc) per token.
PRICES = Prices(input_per_million=1000.0, output_per_million=2000.0)
IN, OUT = 1_000_000, 2_000_000


def usage(prompt: int, completion: int) -> inference_pb2.Usage:
    return inference_pb2.Usage(prompt_tokens=prompt, completion_tokens=completion)


async def admit(accounting, secret: str, *, prompt=100, max_out=200, prices=PRICES, request_id="req", **kw):
    principal = await accounting.authenticate(secret)
    return await accounting.admit(
        principal,
        request_id=request_id,
        model="acme/model",
        prices=prices,
        prompt_tokens=prompt,
        max_completion_tokens=max_out,
        **kw,
    )


async def test_reserve_then_settle_bills_the_usage_and_returns_the_rest(accounting):
    key_id, secret = await new_key(accounting, credits=1.0)
    admission = await admit(accounting, secret, prompt=100, max_out=200)
    # Held: 100 * IN + 200 * OUT = 0.5 credits, drawn from the router's lease on the key's credits.
    held = await ledger_figures(accounting.database, key_id)
    assert held["open_holds"] == 1
    assert held["held"] >= 500_000_000
    assert held["balance"] + held["held"] == 1_000_000_000

    settlement = await accounting.settle(admission, usage(100, 50))
    assert settlement.cost_nanocredits == 200_000_000
    assert settlement.cost == pytest.approx(0.2)
    figures = await ledger_figures(accounting.database, key_id)
    assert figures["balance"] == 800_000_000
    assert figures["settlement"] == -200_000_000
    assert_exact_ledger(figures)


async def test_a_settlement_in_the_background_costs_the_same_and_is_written_once(accounting):
    # The router's way: the response does not wait for its bill.
    key_id, secret = await new_key(accounting, credits=1.0)
    admission = await admit(accounting, secret, prompt=100, max_out=200)
    settlement = accounting.settle_in_background(admission, usage(100, 50))
    assert settlement.cost_nanocredits == 200_000_000
    assert accounting.settle_in_background(admission, usage(100, 200)) is settlement
    await accounting.settled()
    figures = await ledger_figures(accounting.database, key_id)
    assert (figures["balance"], figures["settlements"]) == (800_000_000, 1)
    assert_exact_ledger(figures)


async def test_every_step_is_a_ledger_row_tied_to_the_request(accounting):
    key_id, secret = await new_key(accounting, credits=1.0)
    admission = await admit(accounting, secret, request_id="req-ledger")
    await accounting.settle(admission, usage(100, 10))
    async with accounting.database.engine.connect() as connection:
        rows = (
            await connection.execute(
                select(
                    schema.credit_ledger.c.kind,
                    schema.credit_ledger.c.amount_nanocredits,
                    schema.credit_ledger.c.request_id,
                )
                .where(schema.credit_ledger.c.key_id == key_id)
                .order_by(schema.credit_ledger.c.id)
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("top_up", 1_000_000_000, None),
        # The lease: credit_lease_credits (1.0) of the balance, which covers the 0.5 hold.
        ("reservation", -1_000_000_000, None),
        ("settlement", -120_000_000, "req-ledger"),
        # The charge paid out of the lease, then the lease returned.
        ("release", 120_000_000, None),
        ("release", 880_000_000, None),
    ]


async def test_settling_twice_bills_once(accounting):
    key_id, secret = await new_key(accounting, credits=1.0)
    admission = await admit(accounting, secret)
    first = await accounting.settle(admission, usage(100, 50))
    second = await accounting.settle(admission, usage(100, 200))
    assert second == first
    # Even writing the same draw's charge again straight on the ledger bills nothing.
    again = LedgerCharge(admission._draw.id, key_id, admission._draw.lease.id, 1, "req", "acme/model")
    assert await accounting.ledger.write_charges([again]) == {}
    figures = await ledger_figures(accounting.database, key_id)
    assert figures["settlements"] == 1
    assert figures["balance"] == 800_000_000
    assert_exact_ledger(figures)


async def test_not_enough_credits_is_insufficient_quota_and_changes_nothing(accounting):
    key_id, secret = await new_key(accounting, credits=0.4, max_concurrent_requests=1)
    with pytest.raises(InsufficientQuotaError) as refused:
        await admit(accounting, secret, prompt=100, max_out=200)  # may cost 0.5
    assert "0.5 credits" in refused.value.message
    figures = await ledger_figures(accounting.database, key_id)
    assert figures["balance"] == 400_000_000
    assert figures["reservations"] == 0
    # The refused request did not take the key's one concurrent request: the next one is admitted,
    # and only a second one while it runs is refused.
    running = await admit(accounting, secret, prompt=100, max_out=100, request_id="running")
    with pytest.raises(RateLimitExceededError):
        await admit(accounting, secret, prompt=1, max_out=1, request_id="second")
    await accounting.settle(running, usage(100, 10))


async def test_a_key_revoked_elsewhere_cannot_reserve(accounting):
    key_id, secret = await new_key(accounting, credits=1.0)
    principal = await accounting.authenticate(secret)
    await accounting.keys.revoke(key_id)  # the principal above is still cached
    with pytest.raises(InvalidApiKeyError):
        await accounting.admit(
            principal,
            request_id="r",
            model="acme/model",
            prices=PRICES,
            prompt_tokens=1,
            max_completion_tokens=1,
        )


async def test_a_model_outside_the_keys_allowance_is_refused(accounting):
    _, secret = await new_key(accounting, allowed_models=("acme/other",))
    with pytest.raises(PermissionDeniedError):
        await admit(accounting, secret)


async def test_concurrent_reservations_never_overspend(accounting):
    # 0.5 credits per request, 10 credits: exactly 20 of 60 simultaneous requests fit.
    key_id, secret = await new_key(accounting, credits=10.0)
    await accounting.authenticate(secret)

    async def one(i: int):
        try:
            return await admit(accounting, secret, request_id=f"r{i}")
        except InsufficientQuotaError:
            return None

    admissions = await asyncio.gather(*(one(i) for i in range(60)))
    admitted = [a for a in admissions if a is not None]
    assert len(admitted) == 20
    assert (await ledger_figures(accounting.database, key_id))["balance"] == 0

    await asyncio.gather(*(accounting.settle(a, usage(100, 100)) for a in admitted))
    figures = await ledger_figures(accounting.database, key_id)
    assert figures["balance"] == 10_000_000_000 - 20 * 300_000_000
    assert_exact_ledger(figures)


async def test_a_cancelled_request_is_billed_for_what_it_generated(accounting):
    key_id, secret = await new_key(accounting, credits=1.0)
    generating = asyncio.Event()

    async def request():
        admission = await admit(accounting, secret)
        generated = 0
        try:
            generated = 30
            generating.set()
            await asyncio.Event().wait()  # the client goes away here
        finally:
            await accounting.settle(admission, usage(100, generated))

    task = asyncio.create_task(request())
    await generating.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    figures = await ledger_figures(accounting.database, key_id)
    assert figures["settlement"] == -(100 * IN + 30 * OUT)
    assert_exact_ledger(figures)


async def test_a_settlement_survives_its_caller_being_cancelled_again(settings, clock):
    from services.router.accounting import Accounting

    accounting = Accounting(settings, clock=clock)
    await accounting.start()
    key_id, secret = await new_key(accounting, credits=1.0)
    admission = await admit(accounting, secret)
    settling = asyncio.create_task(accounting.settle(admission, usage(100, 30)))
    await asyncio.sleep(0)  # one turn of the loop: settle() is now waiting on its database work
    settling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await settling
    await accounting.close()  # waits for the settlement to be written

    reopened = Accounting(settings, clock=clock)
    await reopened.start()
    try:
        figures = await ledger_figures(reopened.database, key_id)
        assert figures["settlement"] == -(100 * IN + 30 * OUT)
        assert_exact_ledger(figures)
    finally:
        await reopened.close()


async def test_usage_beyond_the_estimate_is_billed_in_full(accounting):
    # The router counts prompt tokens before the engine does; if it counted low, the real usage is
    # still what is billed.
    key_id, secret = await new_key(accounting, credits=1.0)
    admission = await admit(accounting, secret, prompt=10, max_out=10)
    await accounting.settle(admission, usage(400, 10))
    figures = await ledger_figures(accounting.database, key_id)
    assert figures["balance"] == 1_000_000_000 - (400 * IN + 10 * OUT)
    assert_exact_ledger(figures)


async def test_usage_from_several_models_is_billed_at_each_models_prices(accounting):
    # A request held at the dearest model of its plan, served in part by a cheaper one (a stream
    # resumed elsewhere): each part at its own model's prices, the rest of the hold returned.
    key_id, secret = await new_key(accounting, credits=1.0)
    admission = await admit(accounting, secret, prompt=100, max_out=200)
    half = Prices(input_per_million=500.0, output_per_million=1000.0)
    settlement = await accounting.settle(
        admission, usage(100, 30), charges=[Charge(half, 100, 10), Charge(PRICES, 0, 20)]
    )
    assert settlement.cost_nanocredits == 100 * IN // 2 + 10 * OUT // 2 + 20 * OUT
    figures = await ledger_figures(accounting.database, key_id)
    assert figures["balance"] == 1_000_000_000 - settlement.cost_nanocredits
    assert_exact_ledger(figures)


async def test_free_requests_touch_no_ledger(accounting):
    key_id, secret = await new_key(accounting, credits=0)
    admission = await admit(accounting, secret, prices=FREE)
    assert (await accounting.settle(admission, usage(100, 100))).cost_nanocredits == 0
    figures = await ledger_figures(accounting.database, key_id)
    assert figures["reservations"] == figures["settlements"] == 0


async def test_cache_hits_cost_the_configured_fraction(make_accounting):
    accounting = await make_accounting(cached_response_price_factor=0.25)
    key_id, secret = await new_key(accounting, credits=1.0)
    admission = await admit(accounting, secret, cached=True)
    settlement = await accounting.settle(admission, usage(100, 100))
    assert settlement.cost_nanocredits == (100 * IN + 100 * OUT) // 4
    assert_exact_ledger(await ledger_figures(accounting.database, key_id))


async def test_a_swept_lease_is_not_released_twice_when_its_request_finishes(accounting):
    key_id, secret = await new_key(accounting, credits=1.0)
    admission = await admit(accounting, secret)
    # Another router's sweep releases leases not refreshed for longer than the longest request ...
    future = datetime.now(UTC) + timedelta(seconds=1)
    another_router = CreditLedger(accounting.database, "another-router")
    assert await another_router.release_abandoned(older_than=future, own=False) == 1
    assert (await ledger_figures(accounting.database, key_id))["balance"] == 1_000_000_000
    # ... and should the request still end, its usage is billed from the balance and nothing is
    # returned again.
    await accounting.settle(admission, usage(100, 50))
    figures = await ledger_figures(accounting.database, key_id)
    assert figures["balance"] == 800_000_000
    assert figures["releases"] == 1
    assert_exact_ledger(figures)


async def test_reconcile_at_start_releases_only_this_routers_leases(settings, clock):
    from services.router.accounting import Accounting

    crashed = Accounting(settings, clock=clock)
    await crashed.start()
    key_id, secret = await new_key(crashed, credits=2.0)
    await admit(crashed, secret, request_id="mine")
    other = Accounting(settings.model_copy(update={"instance_name": "another-router"}), clock=clock)
    await other.start()
    await admit(other, secret, request_id="theirs", max_out=10)
    await other.close()
    await crashed.close()  # as if killed: both leases are still open, each with a running request

    restarted = Accounting(settings, clock=clock)
    await restarted.start()
    try:
        figures = await ledger_figures(restarted.database, key_id)
        # "mine" released unbilled; "theirs" may still be running on the other router.
        assert figures["open_holds"] == 1
        assert figures["held"] >= 100 * IN + 10 * OUT
        assert figures["balance"] == 2_000_000_000 - figures["held"]
    finally:
        await restarted.close()


async def test_requests_draw_from_one_lease_and_a_key_is_refused_only_past_balance_and_lease(
    make_accounting,
):
    accounting = await make_accounting(credit_lease_credits=1.2)
    key_id, secret = await new_key(accounting, credits=1.5)
    first = await admit(accounting, secret, request_id="a", max_out=100)  # holds 0.3
    second = await admit(accounting, secret, request_id="b", max_out=100)
    figures = await ledger_figures(accounting.database, key_id)
    # One grant of 1.2 covers both holds; 0.3 stays in the balance.
    assert (figures["reservations"], figures["balance"]) == (1, 300_000_000)
    # 0.6 free in the lease + 0.3 in the balance: a 0.9 hold fits (the lease grows), a 1.0 one not.
    with pytest.raises(InsufficientQuotaError):
        await admit(accounting, secret, request_id="c", max_out=450)
    third = await admit(accounting, secret, request_id="d", max_out=400)
    for admission in (first, second, third):
        accounting.settle_in_background(admission, usage(100, 10))
    await accounting.settled()
    figures = await ledger_figures(accounting.database, key_id)
    assert figures["balance"] == 1_500_000_000 - 3 * 120_000_000
    assert_exact_ledger(figures)


class GrantPausedAfterCommit(CreditLedger):
    """A ledger whose next grant, once committed, waits for the test before its router sees it:
    the widest window for a return of the same lease to commit after it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.committed = asyncio.Event()
        self.resume = asyncio.Event()
        self.resume.set()

    def pause_next_grant(self) -> None:
        self.committed.clear()
        self.resume.clear()

    async def take(self, *args, **kwargs) -> int:
        taken = await super().take(*args, **kwargs)
        self.committed.set()
        await self.resume.wait()
        return taken


async def test_a_lease_being_grown_is_not_returned_meanwhile_so_its_credits_are_spent_once(accounting, clock):
    key_id, secret = await new_key(accounting, credits=1.0)
    ledger = GrantPausedAfterCommit(accounting.database, "router-b")
    book = LeaseBook(ledger, lease_size=500_000_000, idle_seconds=2.0, clock=clock)
    first = await book.draw(key_id, 300_000_000)  # a lease of 0.5
    book.settle(first, key_id, 100_000_000, request_id="first", model="acme/model")
    await book.write()  # the lease holds 0.4, no request runs on it: idle

    ledger.pause_next_grant()
    growing = asyncio.create_task(book.draw(key_id, 600_000_000))  # grows the lease by the last 0.5
    await ledger.committed.wait()
    await book.return_idle(at_once=True)  # must leave the growing lease alone
    ledger.resume.set()
    second = await growing

    # The key's whole balance is in router-b's lease: no credit is left for this router to draw.
    assert (await ledger_figures(accounting.database, key_id))["balance"] == 0
    with pytest.raises(InsufficientQuotaError):
        await admit(accounting, secret, prompt=100, max_out=200)  # may cost 0.5
    book.settle(second, key_id, 600_000_000, request_id="second", model="acme/model")
    await book.close()
    figures = await ledger_figures(accounting.database, key_id)
    assert figures["balance"] == 1_000_000_000 - 100_000_000 - 600_000_000
    assert_exact_ledger(figures)


async def test_a_lease_held_by_a_long_request_is_refreshed_so_no_sweep_takes_it(accounting):
    key_id, secret = await new_key(accounting, credits=1.0)
    admission = await admit(accounting, secret)  # a long stream: nothing is charged meanwhile
    long_ago = datetime.now(UTC) - timedelta(seconds=accounting.settings.reservation_max_age_seconds * 2)
    async with accounting.database.engine.begin() as connection:
        await connection.execute(update(schema.open_reservations).values(created_at=long_ago))

    await accounting.refresh_leases()
    another_router = CreditLedger(accounting.database, "another-router")
    older_than = datetime.now(UTC) - timedelta(seconds=accounting.settings.reservation_max_age_seconds)
    assert await another_router.release_abandoned(older_than=older_than, own=False) == 0

    await accounting.settle(admission, usage(100, 50))
    figures = await ledger_figures(accounting.database, key_id)
    assert (figures["balance"], figures["releases"]) == (800_000_000, 2)
    assert_exact_ledger(figures)


async def test_a_lease_swept_meanwhile_is_not_drawn_from_after_a_refresh(accounting):
    key_id, secret = await new_key(accounting, credits=1.0)
    await accounting.settle(await admit(accounting, secret, max_out=10), usage(1, 1))
    first = await admit(accounting, secret, max_out=10)
    future = datetime.now(UTC) + timedelta(seconds=1)
    assert (
        await CreditLedger(accounting.database, "another-router").release_abandoned(
            older_than=future, own=False
        )
        == 1
    )
    await accounting.refresh_leases()
    # The next request takes a new lease backed by the balance, not the swept one's credits.
    second = await admit(accounting, secret, max_out=10)
    assert (await ledger_figures(accounting.database, key_id))["open_holds"] == 1
    for admission in (first, second):
        accounting.settle_in_background(admission, usage(100, 10))
    await accounting.settled()
    figures = await ledger_figures(accounting.database, key_id)
    assert figures["balance"] == 1_000_000_000 - (1 * IN + 1 * OUT) - 2 * 120_000_000
    assert_exact_ledger(figures)
