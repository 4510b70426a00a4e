"""What the router tells callers about its decisions: Route, the request breakdown, redaction; and
the routing that callers notice only as speed: prefix affinity, registry reloads."""

from __future__ import annotations

import time

import pytest
from google.protobuf import struct_pb2

from switchyard.router.v1 import router_service_pb2 as router_pb2
from tests.router.conftest import MODELS, ModelSpec, registry_yaml, start_engine
from tests.router.requests import chat_input, generate_request, prompt_input


async def test_route_returns_the_decision_without_generating(make_cluster):
    cluster = await make_cluster()
    request = generate_request(chat_input(("user", "hi"), max_tokens=5), exclude_models=["acme/best"])
    route = await cluster.stub.Route(router_pb2.RouteRequest(request=request))
    assert route.model == "acme/fast"
    assert route.replica in {engine.address for engine in cluster.engines["acme/fast"]}
    assert route.category == "chat" and 0 < route.difficulty < 0.3
    assert [(c.model, c.eligible) for c in route.candidates] == [
        ("acme/fast", True),
        ("globex/mid", True),
        ("acme/best", False),
    ]
    assert route.candidates[2].excluded_reason == "excluded by exclude_models"
    assert route.routing_time > 0
    assert not any(engine.backend.requests for engine in cluster.all_engines())


async def test_the_breakdown_accounts_for_the_request(make_cluster):
    cluster = await make_cluster()
    metadata = struct_pb2.Struct()
    metadata.update({"team": "search", "ticket": 7})
    before = time.time()
    request = generate_request(
        chat_input(
            ("user", "Write a Python function that reverses a string."), max_tokens=6, ignore_eos=True
        ),
        model="globex/mid",
        request_breakdown=True,
        stream=True,
        metadata=metadata,
    )
    reply = await cluster.generate(request)
    breakdown, usage = reply.finished.breakdown, reply.finished.usage

    assert (breakdown.prompt_tokens, breakdown.completion_tokens) == (usage.prompt_tokens, 6)
    # globex/mid costs 1 credit per million prompt tokens and 2 per million completion tokens.
    assert breakdown.cost == pytest.approx((usage.prompt_tokens * 1.0 + 6 * 2.0) / 1e6)
    assert (breakdown.model, breakdown.provider) == ("globex/mid", "globex")
    assert breakdown.category == "code" and breakdown.difficulty > 0.4
    assert breakdown.preference == router_pb2.ROUTER_PREFERENCE_BALANCED
    assert [score.model for score in breakdown.scores] == ["globex/mid"]
    assert 0 < breakdown.routing_time <= breakdown.time_to_first_token <= breakdown.latency
    assert (breakdown.attempts, list(breakdown.fallbacks_used), breakdown.cached) == (1, [], False)
    assert before - 1 <= breakdown.timestamp.ToSeconds() <= time.time()
    assert (breakdown.status_code, breakdown.stream) == (200, True)
    assert dict(breakdown.metadata) == {"team": "search", "ticket": 7}


async def test_without_asking_there_is_no_breakdown(make_cluster):
    cluster = await make_cluster()
    reply = await cluster.generate(generate_request(prompt_input("hi", max_tokens=2)))
    assert not reply.finished.HasField("breakdown")
    assert reply.finished.usage.completion_tokens == 2


async def test_a_conversation_stays_on_the_replica_that_holds_its_prefix(make_cluster):
    cluster = await make_cluster([ModelSpec("acme/fast", "acme", 0.4, replicas=2)])
    system = (
        "You are the support agent of a bicycle shop. Answer politely and in full sentences. " * 8
    ).strip()
    placements: dict[str, set[str]] = {}
    cached_later_turns = []
    for customer in ("ann", "bob", "cyd", "dan"):
        messages = [("system", system), ("user", f"Hello, I am {customer} and my bike has a flat tyre.")]
        for turn in range(3):
            reply = await cluster.generate(
                generate_request(chat_input(*messages, max_tokens=16, temperature=0, ignore_eos=True))
            )
            placements.setdefault(customer, set()).add(reply.routed.replica)
            if turn:
                cached_later_turns.append(
                    reply.finished.usage.cached_tokens / reply.finished.usage.prompt_tokens
                )
            messages += [
                ("assistant", reply.text()),
                ("user", f"Thanks. Question {turn + 2} from {customer}?"),
            ]
    assert all(len(replicas) == 1 for replicas in placements.values()), placements
    assert min(cached_later_turns) > 0.5, "later turns find most of their prompt in the engine's cache"


async def test_the_registry_reloads_without_a_restart(make_cluster):
    cluster = await make_cluster()
    newcomer = await start_engine("initech/new", {})
    cluster.engines["initech/new"] = [newcomer]
    specs = [*MODELS, ModelSpec("initech/new", "initech", 0.6)]
    addresses = {model: [engine.address for engine in engines] for model, engines in cluster.engines.items()}
    cluster.registry_path.write_text(registry_yaml(specs, addresses))
    assert cluster.router.reload_registry()

    listed = await cluster.stub.ListModels(router_pb2.ListModelsRequest())
    assert "initech/new" in [model.id for model in listed.models]
    reply = await cluster.generate(generate_request(prompt_input("hi", max_tokens=2), model="initech/new"))
    assert reply.routed.replica == newcomer.address
