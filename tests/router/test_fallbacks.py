"""Failures the caller should not notice: replicas that die or fail, mid-stream resume, fallback
models, cool-downs; and the limits: deadlines, cancellation, requests that cannot be resumed."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from services.common.errors import RemoteError
from switchyard.inference.v1 import inference_pb2
from tests.router.conftest import ModelSpec, eventually
from tests.router.requests import chat_input, generate_request, prompt_input

LENGTH = inference_pb2.FINISH_REASON_LENGTH


def tokens(reply, index: int = 0) -> int:
    return sum(len(delta.token_ids) for delta in reply.deltas if delta.index == index)


def sent_before_failure(reply, tokens_sent: int) -> list[inference_pb2.TokenDelta]:
    """The deltas of the engine that failed after `tokens_sent` tokens: the engine sends a delta per
    token, or several tokens in one when they pile up (services/engine/coalesce.py)."""
    deltas, count = [], 0
    for delta in reply.deltas:
        if count == tokens_sent:
            break
        deltas.append(delta)
        count += len(delta.token_ids)
    return deltas


async def test_a_replica_stopped_mid_run_costs_the_clients_nothing(make_cluster):
    specs = [ModelSpec("acme/fast", "acme", 0.4, replicas=2, sim={"inter_token_latency": 0.01})]
    cluster = await make_cluster(specs, replicas={"policy": "round_robin"})
    victim, survivor = cluster.engines["acme/fast"]
    generation = prompt_input(
        "Tell me a story about a lighthouse", max_tokens=40, temperature=0, ignore_eos=True
    )
    calls = [asyncio.create_task(cluster.generate(generate_request(generation))) for _ in range(6)]
    await victim.backend.streaming.wait()
    await victim.server.stop(0)

    replies = await asyncio.gather(*calls)  # no client sees an error
    for reply in replies:
        assert reply.finish_reasons() == {0: LENGTH}
        assert tokens(reply) == 40 == reply.finished.usage.completion_tokens
    assert {reply.routed.replica for reply in replies} == {victim.address, survivor.address}
    later = await cluster.generate(generate_request(prompt_input("hello", max_tokens=3)))
    assert later.routed.replica == survivor.address


async def test_a_stream_broken_mid_way_is_resumed_elsewhere_as_one_stream(make_cluster):
    specs = [ModelSpec("acme/fast", "acme", 0.4, replicas=2)]
    cluster = await make_cluster(specs, replicas={"policy": "round_robin"})
    first, second = cluster.engines["acme/fast"]
    first.backend.break_after_deltas = 5
    generation = prompt_input("Once upon a time", max_tokens=20, temperature=0, ignore_eos=True)
    reply = await cluster.generate(generate_request(generation, request_breakdown=True))

    assert reply.routed.replica == first.address
    assert reply.finish_reasons() == {0: LENGTH}
    assert tokens(reply) == 20 == reply.finished.usage.completion_tokens
    sent_text = "".join(delta.text for delta in sent_before_failure(reply, 5))
    continuation = second.backend.requests[-1].input
    assert continuation.prompt.text == "Once upon a time" + sent_text
    assert continuation.sampling.max_tokens == 15
    assert reply.finished.breakdown.attempts == 2


async def test_a_chat_with_several_choices_resumes_each_unfinished_choice(make_cluster):
    specs = [ModelSpec("acme/fast", "acme", 0.4, replicas=2)]
    cluster = await make_cluster(specs, replicas={"policy": "round_robin"})
    first, second = cluster.engines["acme/fast"]
    first.backend.break_after_deltas = 5  # the sim steps choices in turn: 3 tokens of choice 0, 2 of choice 1
    generation = chat_input(("user", "Name some rivers"), max_tokens=8, n=2, temperature=0, ignore_eos=True)
    reply = await cluster.generate(generate_request(generation))

    assert reply.finish_reasons() == {0: LENGTH, 1: LENGTH}
    assert tokens(reply, 0) == tokens(reply, 1) == 8
    assert reply.finished.usage.completion_tokens == 16
    continuations = second.backend.requests
    assert [request.input.sampling.n for request in continuations] == [1, 1]
    assert [request.input.sampling.max_tokens for request in continuations] == [5, 6]
    partial = continuations[0].input.chat.messages[-1]
    sent_text = "".join(d.text for d in sent_before_failure(reply, 5) if d.index == 0)
    assert (partial.role, partial.content) == ("assistant", sent_text)
    assert '"continue_final_message": true' in continuations[0].input.chat.chat_template_kwargs_json


async def test_a_request_that_cannot_be_resumed_faithfully_fails_after_its_partial_stream(make_cluster):
    specs = [ModelSpec("acme/fast", "acme", 0.4, replicas=2)]
    cluster = await make_cluster(specs, replicas={"policy": "round_robin"})
    cluster.engines["acme/fast"][0].backend.break_after_deltas = 3
    echo = prompt_input("Repeat after me", max_tokens=10, echo=True, ignore_eos=True)
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for event in cluster.stub.Generate(generate_request(echo)):
            received.append(event)
    error = RemoteError.from_rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "ENGINE_UNAVAILABLE")
    assert "echo" in error.message
    routed, *deltas = received
    assert routed.HasField("routed") and all(event.HasField("delta") for event in deltas)
    assert sum(len(event.delta.token_ids) for event in deltas) == 3


async def test_fallback_models_are_tried_in_order(make_cluster):
    cluster = await make_cluster()
    for model in ("acme/fast", "acme/best"):
        for engine in cluster.engines[model]:
            engine.backend.failing = True
    request = generate_request(
        prompt_input("hi", max_tokens=3),
        model="acme/fast",
        fallback_models=["acme/best", "globex/mid"],
        request_breakdown=True,
    )
    reply = await cluster.generate(request)
    assert reply.routed.model == "globex/mid"
    breakdown = reply.finished.breakdown
    assert list(breakdown.fallbacks_used) == ["acme/fast", "acme/best"]
    assert breakdown.attempts == 4  # both acme/fast replicas, acme/best, globex/mid
    assert [len(engine.backend.requests) for engine in cluster.all_engines()] == [1, 1, 1, 1]


async def test_without_fallbacks_the_next_scored_candidate_serves(make_cluster):
    cluster = await make_cluster()
    for engine in cluster.engines["acme/fast"]:
        engine.backend.failing = True
    reply = await cluster.generate(
        generate_request(chat_input(("user", "hi"), max_tokens=3), request_breakdown=True)
    )
    ranked = [score.model for score in reply.finished.breakdown.scores]
    assert ranked[:2] == ["acme/fast", "globex/mid"]
    assert reply.routed.model == "globex/mid"


async def test_a_failing_replica_is_cooled_down_and_comes_back_when_it_recovers(make_cluster):
    specs = [ModelSpec("acme/fast", "acme", 0.4, replicas=2)]
    cluster = await make_cluster(
        specs, replicas={"policy": "round_robin", "failures_before_cooldown": 1, "cooldown_seconds": 1.0}
    )
    sick, healthy = cluster.engines["acme/fast"]
    sick.backend.failing = True
    request = generate_request(prompt_input("hi", max_tokens=2))

    first = await cluster.generate(request)
    assert first.routed.replica == healthy.address, "the failure cost the client nothing"
    assert len(sick.backend.requests) == 1
    state = cluster.router.pool.get(sick.address)
    cooling_until = state.cooldown_until
    while True:  # every request made while it cools goes elsewhere
        assert (await cluster.generate(request)).routed.replica == healthy.address
        if time.monotonic() >= cooling_until:
            break  # the cool-down ended during this request, which may have probed it
        assert len(sick.backend.requests) == 1

    sick.backend.failing = False

    async def served_by_the_recovered_replica() -> bool:
        return (await cluster.generate(request)).routed.replica == sick.address

    await eventually(served_by_the_recovered_replica, within=10)
    assert state.consecutive_failures == 0


async def test_the_deadline_bounds_the_chain_of_retries(make_cluster):
    specs = [ModelSpec("acme/fast", "acme", 0.4, replicas=2)]
    cluster = await make_cluster(
        specs,
        retry={"backoff_initial": 30.0, "backoff_max": 30.0, "max_attempts": 10},
        replicas={"failures_before_cooldown": 100},
    )
    for engine in cluster.engines["acme/fast"]:
        engine.backend.failing = True
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.generate(generate_request(prompt_input("hi", max_tokens=2)), timeout=5)
    error = RemoteError.from_rpc_error(caught.value)
    # The router's own answer (gRPC's deadline carries no ErrorInfo): a 15 s+ backoff cannot fit.
    assert (error.code, error.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "TIMEOUT")
    assert sum(len(engine.backend.requests) for engine in cluster.all_engines()) == 1


async def test_the_deadline_reaches_the_engine(make_cluster):
    specs = [ModelSpec("globex/mid", "globex", 0.7, sim={"inter_token_latency": 0.05})]
    cluster = await make_cluster(specs)
    engine = cluster.engines["globex/mid"][0]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.generate(
            generate_request(prompt_input("go on", max_tokens=400, ignore_eos=True)), timeout=0.5
        )
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await eventually(lambda: _idle(engine))


async def test_cancelling_the_call_cancels_the_engine_call(make_cluster):
    specs = [ModelSpec("globex/mid", "globex", 0.7, sim={"inter_token_latency": 0.05})]
    cluster = await make_cluster(specs)
    engine = cluster.engines["globex/mid"][0]
    call = cluster.stub.Generate(generate_request(prompt_input("go on", max_tokens=400, ignore_eos=True)))
    async for event in call:
        if event.HasField("delta"):
            break
    assert not await _idle(engine)
    call.cancel()
    await eventually(lambda: _idle(engine))
    await eventually(lambda: cluster.router.pool.get(engine.address).outstanding == 0)


async def _idle(engine) -> bool:
    load = await engine.load()
    return load.running_requests + load.waiting_requests == 0
