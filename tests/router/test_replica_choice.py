"""Replica choice policies and cool-downs, on real (unconnected) replicas with a controlled clock."""

from __future__ import annotations

from collections import Counter

import pytest

from services.router.features import extract_features
from services.router.registry import parse_registry
from services.router.replicas import ReplicaChooser, ReplicaPool
from services.router.settings import ReplicaSettings
from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from tests.router.requests import chat_input

ADDRESSES = ["10.9.0.1:1", "10.9.0.2:1", "10.9.0.3:1"]
REGISTRY = parse_registry(
    f"""
models:
  - id: acme/model
    provider: acme
    quality: 0.5
    input_price: 1
    output_price: 1
    context_window: 100000
    replicas: {ADDRESSES}
""",
    environ={},
)
MODEL = REGISTRY.resolve("acme/model")
SYSTEM = "You are Switchyard's support agent. Answer in two sentences. " * 10


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def pool():
    pool = ReplicaPool(
        ReplicaSettings(failures_before_cooldown=2, cooldown_seconds=5, max_cooldown_seconds=8)
    )
    pool.sync(ADDRESSES)
    yield pool
    await pool.close()


def chooser_for(pool: ReplicaPool, clock: Clock | None = None, **settings) -> ReplicaChooser:
    return ReplicaChooser(pool, ReplicaSettings(prefix_block_chars=64, **settings), clock or Clock())


def conversation(*user_turns: str):
    messages = [("system", SYSTEM)]
    for turn in user_turns:
        messages += [("user", turn), ("assistant", f"Answer to {turn}")]
    return extract_features(chat_input(*messages[:-1]), 4.0)


def pick(chooser: ReplicaChooser, features=None, **kw) -> str:
    replica = chooser.choose(MODEL, features or conversation("hi"), **kw)
    return replica.address if replica else ""


async def test_round_robin_takes_turns(pool):
    chooser = chooser_for(pool, policy="round_robin")
    assert [pick(chooser) for _ in range(6)] == ADDRESSES * 2


async def test_least_loaded_counts_outstanding_calls_and_engine_reports(pool):
    chooser = chooser_for(pool, policy="least_loaded")
    one, two, three = (pool.get(a) for a in ADDRESSES)
    one.outstanding = 3
    two.load = engine_pb2.GetLoadResponse(running_requests=1, waiting_requests=4)
    assert pick(chooser) == three.address
    three.outstanding = 6
    assert pick(chooser) == one.address  # 3 against the engine's 1 running + 4 waiting
    one.outstanding = 7
    assert pick(chooser) == two.address
    # Equal loads share the traffic.
    for replica in (one, two, three):
        replica.outstanding, replica.load = 0, None
    assert Counter(pick(chooser) for _ in range(30)) == Counter({a: 10 for a in ADDRESSES})


async def test_prefix_affinity_keeps_a_conversation_on_its_replica(pool):
    chooser = chooser_for(pool)
    first = pick(chooser, conversation("Where is my order 1234?"))
    pool.get(first).outstanding = 2  # busier than the others, but within the slack
    second = pick(chooser, conversation("Where is my order 1234?", "It was due on Monday, what happened?"))
    third = pick(
        chooser,
        conversation("Where is my order 1234?", "It was due on Monday, what happened?", "Can you refund?"),
    )
    assert first == second == third


async def test_an_overloaded_affine_replica_is_passed_over(pool):
    chooser = chooser_for(pool, affinity_load_slack=4)
    first = pick(chooser, conversation("Where is my order 1234?"))
    pool.get(first).outstanding = 5
    assert pick(chooser, conversation("Where is my order 1234?", "And my other order?")) != first


async def test_session_affinity_by_customer_when_no_prefix_is_known(pool):
    chooser = chooser_for(pool)
    short = extract_features(chat_input(("user", "hi")), 4.0)  # shorter than one block
    places = {pick(chooser, short, customer="customer-7") for _ in range(5)}
    assert len(places) == 1
    others = {pick(chooser, short) for _ in range(6)}
    assert len(others) > 1, "without a customer, short prompts spread by load"


async def test_route_decisions_do_not_teach_the_affinity_tables(pool):
    chooser = chooser_for(pool)
    features = conversation("Where is my order 1234?")
    pick(chooser, features, record=False)
    assert len(chooser.prefixes) == 0
    pick(chooser, features)
    assert len(chooser.prefixes) > 0


async def test_unhealthy_excluded_and_cooled_down_replicas_are_skipped_until_the_cooldown_ends(pool):
    clock = Clock()
    chooser = chooser_for(pool, clock, policy="round_robin")
    one, two, three = (pool.get(a) for a in ADDRESSES)
    one.serving = False
    two.record_failure(clock.now)
    assert two.available(clock.now), "one failure is not enough"
    two.record_failure(clock.now)
    assert {pick(chooser) for _ in range(4)} == {three.address}
    assert pick(chooser, exclude={three.address}) == ""

    clock.now += 5  # the cool-down is over: the next request probes it
    assert two.address in {pick(chooser) for _ in range(4)}
    two.record_failure(clock.now)  # the probe failed: cooled down again, for longer
    clock.now += 5
    assert not two.available(clock.now)
    clock.now += 3  # capped at max_cooldown_seconds
    assert two.available(clock.now)
    two.record_success()
    two.record_failure(clock.now)
    assert two.available(clock.now), "a success starts the count again"


async def test_a_retired_replica_is_forgotten(pool):
    chooser = chooser_for(pool)
    features = conversation("Where is my order 1234?")
    first = pick(chooser, features)
    retired = pool.sync([a for a in ADDRESSES if a != first])
    chooser.forget(retired)
    assert retired == [first]
    assert pick(chooser, features) != first
