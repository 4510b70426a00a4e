"""The router with accounting on (a temporary SQLite database), as its gRPC callers see it: keys,
model allowances, credits held and billed, rate-limit metadata, the response cache, the request log
and AccountsService beside RouterService. Real sim engines, a real RouterServer on port 0."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.errors import RemoteError
from services.router.accounting import Accounting, KeyPolicy, Prices
from services.router.accounting.errors import NotFoundError
from services.router.accounting.service import SERVICE_NAME as ACCOUNTS_SERVICE
from switchyard.router.v1 import accounts_service_pb2 as accounts_pb2
from switchyard.router.v1 import accounts_service_pb2_grpc as accounts_grpc
from switchyard.router.v1 import router_service_pb2 as router_pb2
from tests.router.conftest import MODELS, Cluster, ModelSpec, eventually
from tests.router.requests import chat_input, generate_request, prompt_input

# acme/fast's prices in MODELS: 0.5 and 1.0 credits per million tokens.
FAST_PRICES = Prices(0.5, 1.0)
# One model at the same prices whose engine takes 20 ms per token: streams that can be interrupted.
SLOW = [
    ModelSpec(
        "acme/slow", "acme", quality=0.5, input_price=0.5, output_price=1.0, sim={"inter_token_latency": 0.02}
    )
]


@pytest.fixture
def accounted(make_cluster, tmp_path):
    """make_cluster with accounting on its own SQLite file and model names redacted by default."""

    async def make(specs: list[ModelSpec] = MODELS, **settings) -> Cluster:
        accounting = {
            "enabled": True,
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'state.db'}",
            "instance_name": "router-under-test",
            **settings.pop("accounting", {}),
        }
        return await make_cluster(specs, accounting=accounting, reveal_model_names=False, **settings)

    return make


async def new_key(cluster: Cluster, credits: float = 10.0, **policy) -> tuple[str, tuple]:
    """A key made through the state layer; returns its id and the call metadata that carries it."""
    record, secret = await cluster.router.accounting.keys.create(
        KeyPolicy(name=policy.pop("name", "test"), **policy), credits=credits
    )
    return record.key_id, (("authorization", f"Bearer {secret}"),)


async def balance(cluster: Cluster, key_id: str) -> int:
    """The key's balance once the settlements begun so far are written (the router does not wait)."""
    await cluster.router.accounting.settled()
    return (await cluster.router.accounting.keys.get(key_id)).balance_nanocredits


async def refusal(call) -> RemoteError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return RemoteError.from_rpc_error(caught.value)


async def consume(call) -> list[router_pb2.GenerateResponse]:
    return [event async for event in call]


async def logged(cluster: Cluster, key_id: str, request_id: str):
    """The request log row, once the router has written it."""
    accounting = cluster.router.accounting
    viewer = next(r.principal for r in await accounting.keys.list() if r.key_id == key_id)
    await accounting.flush_log()
    return await accounting.log.get_request(viewer, request_id)


# --- keys ---------------------------------------------------------------------------------------


async def test_every_rpc_needs_a_known_key(accounted):
    cluster = await accounted()
    request = generate_request(prompt_input("hi", max_tokens=2))
    for metadata in ((), (("authorization", "Bearer sy-nobody"),)):
        for call in (
            consume(cluster.stub.Generate(request, metadata=metadata)),
            cluster.stub.Route(router_pb2.RouteRequest(request=request), metadata=metadata),
            cluster.stub.ListModels(router_pb2.ListModelsRequest(), metadata=metadata),
        ):
            error = await refusal(call)
            assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_API_KEY")
    assert not any(engine.backend.requests for engine in cluster.all_engines())


async def test_a_key_limited_to_some_models_is_routed_among_them_and_refused_the_others(accounted):
    cluster = await accounted()
    _, metadata = await new_key(cluster, allowed_models=("acme/fast",))
    # "powerful" would pick acme/best; the key may only use acme/fast.
    request = generate_request(
        prompt_input("Prove Fermat's last theorem.", max_tokens=2), preference="powerful"
    )
    reply = await cluster.generate(request, metadata=metadata)
    assert reply.finished.usage.completion_tokens == 2
    assert [engine.model for engine in cluster.all_engines() if engine.backend.requests] == ["acme/fast"]

    error = await refusal(
        consume(
            cluster.stub.Generate(generate_request(prompt_input("hi"), model="acme/best"), metadata=metadata)
        )
    )
    assert (error.code, error.reason, error.metadata["param"]) == (
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
        "model",
    ), "as if it did not exist: the key's model list hides it too"
    listed = await cluster.stub.ListModels(router_pb2.ListModelsRequest(), metadata=metadata)
    assert [model.id for model in listed.models] == ["acme/fast"]
    route = await cluster.stub.Route(router_pb2.RouteRequest(request=request), metadata=metadata)
    assert {c.excluded_reason for c in route.candidates if not c.eligible} == {"not allowed for this API key"}


async def test_model_names_are_redacted_unless_the_key_may_see_them(accounted):
    cluster = await accounted()
    _, hidden = await new_key(cluster, name="hidden")
    _, revealed = await new_key(cluster, name="revealed", reveal_model_names=True)
    request = generate_request(prompt_input("hi", max_tokens=2), request_breakdown=True)
    route_request = router_pb2.RouteRequest(request=request)

    reply = await cluster.generate(request, metadata=hidden)
    assert (reply.routed.model, reply.routed.replica) == ("redacted", "")
    assert (reply.finished.breakdown.model, reply.finished.breakdown.provider) == ("redacted", "redacted")
    assert {score.model for score in reply.finished.breakdown.scores} == {"redacted"}
    route = await cluster.stub.Route(route_request, metadata=hidden)
    assert (route.model, route.replica) == ("redacted", "")

    reply = await cluster.generate(request, metadata=revealed)
    assert reply.routed.model == "acme/fast" and reply.routed.replica
    assert reply.finished.breakdown.model == "acme/fast"
    assert (await cluster.stub.Route(route_request, metadata=revealed)).model == "acme/fast"

    named = generate_request(prompt_input("hi", max_tokens=2), model="fast")
    assert (await cluster.generate(named, metadata=hidden)).routed.model == "fast", (
        "the name a hidden key gave explicitly is echoed: it tells the caller nothing new"
    )


# --- credits ------------------------------------------------------------------------------------


async def test_a_request_costs_exactly_its_usage_at_the_serving_models_prices(accounted):
    cluster = await accounted()
    key_id, metadata = await new_key(cluster, credits=1.0)
    before = await balance(cluster, key_id)
    reply = await cluster.generate(
        generate_request(
            prompt_input("Tell me about rivers.", max_tokens=7, ignore_eos=True),
            model="acme/fast",
            request_breakdown=True,
        ),
        metadata=metadata,
    )
    usage = reply.finished.usage
    cost = FAST_PRICES.cost(usage.prompt_tokens, usage.completion_tokens)
    assert usage.completion_tokens == 7 and cost > 0
    assert await balance(cluster, key_id) == before - cost
    assert reply.finished.breakdown.cost == pytest.approx(cost / 1e9)


async def test_a_key_without_enough_credits_is_refused_before_any_engine_work(accounted):
    cluster = await accounted()
    key_id, metadata = await new_key(cluster, credits=0.0)
    request = generate_request(prompt_input("hi", max_tokens=4), request_id="too-poor")
    error = await refusal(consume(cluster.stub.Generate(request, metadata=metadata)))
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "INSUFFICIENT_QUOTA")
    assert not any(engine.backend.requests for engine in cluster.all_engines())
    row = await logged(cluster, key_id, "too-poor")
    assert (row.status_code, row.error_reason, row.cost_nanocredits) == (429, "INSUFFICIENT_QUOTA", 0)


async def test_a_balance_that_cannot_cover_a_dearer_fallback_drops_it_rather_than_the_request(accounted):
    cluster = await accounted()
    # acme/fast may cost about 0.001 credits here, its fallback globex/mid about 0.002.
    request = generate_request(
        prompt_input("hi", max_tokens=1000), model="acme/fast", fallback_models=["globex/mid"]
    )
    for engine in cluster.engines["acme/fast"]:
        engine.backend.failing = True

    poor_id, poor = await new_key(cluster, credits=0.0015, name="poor")
    error = await refusal(consume(cluster.stub.Generate(request, metadata=poor)))
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert "acme/fast" not in error.message, "the models tried are the routing decision redaction hides"
    assert not cluster.engines["globex/mid"][0].backend.requests, "the dearer fallback was not tried"
    assert await balance(cluster, poor_id) == 1_500_000, "nothing was billed, the hold was returned"

    _, rich = await new_key(cluster, credits=1.0, name="rich")
    reply = await cluster.generate(request, metadata=rich)
    assert reply.finished.usage.completion_tokens > 0
    assert len(cluster.engines["globex/mid"][0].backend.requests) == 1


async def test_a_cancelled_stream_is_billed_for_what_it_sent(accounted):
    cluster = await accounted(SLOW)
    key_id, metadata = await new_key(cluster, credits=1.0)
    before = await balance(cluster, key_id)
    request = generate_request(
        prompt_input("go on", max_tokens=500, ignore_eos=True), request_id="cancel-me", stream=True
    )
    call = cluster.stub.Generate(request, metadata=metadata)
    received = 0
    async for event in call:
        received += event.HasField("delta")
        if received == 5:
            break
    call.cancel()

    async def the_row():
        try:
            return await logged(cluster, key_id, "cancel-me")
        except NotFoundError:
            return None

    await eventually(the_row)
    row = await the_row()
    assert row.status_code == 499
    assert 5 <= row.completion_tokens < 500
    assert row.prompt_tokens > 0
    assert row.cost_nanocredits == FAST_PRICES.cost(row.prompt_tokens, row.completion_tokens)
    assert await balance(cluster, key_id) == before - row.cost_nanocredits


# --- limits -------------------------------------------------------------------------------------


async def test_rate_limits_travel_as_initial_metadata_and_a_refusal_says_when_to_retry(accounted):
    cluster = await accounted()
    _, metadata = await new_key(cluster, requests_per_minute=2)
    request = generate_request(prompt_input("hi", max_tokens=2))

    call = cluster.stub.Generate(request, metadata=metadata)
    headers = dict(await call.initial_metadata())
    await consume(call)
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "1"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    await consume(cluster.stub.Generate(request, metadata=metadata))

    error = await refusal(consume(cluster.stub.Generate(request, metadata=metadata)))
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMIT_EXCEEDED")
    assert error.metadata["x-ratelimit-remaining-requests"] == "0"
    assert int(error.metadata["retry_after"]) >= 1
    assert error.metadata["limit"] == "requests"


# --- the response cache -------------------------------------------------------------------------


async def test_a_repeated_deterministic_request_is_answered_from_the_cache_for_free(accounted):
    cluster = await accounted()
    key_id, metadata = await new_key(cluster, credits=1.0)
    request = generate_request(
        chat_input(("user", "Name three rivers."), max_tokens=8, temperature=0),
        model="acme/fast",
        request_breakdown=True,
    )
    first = await cluster.generate(request, metadata=metadata)
    after_first = await balance(cluster, key_id)
    engine_calls = sum(len(engine.backend.requests) for engine in cluster.all_engines())

    again = await cluster.generate(request, metadata=metadata)
    assert again.text() == first.text()
    assert again.order[0] == "routed" and again.routed.replica == ""
    usage = again.finished.usage
    assert usage.cached_tokens == usage.prompt_tokens == first.finished.usage.prompt_tokens
    assert (again.finished.breakdown.cached, again.finished.breakdown.cost) == (True, 0.0)
    assert again.finished.breakdown.attempts == 0
    assert sum(len(engine.backend.requests) for engine in cluster.all_engines()) == engine_calls
    assert await balance(cluster, key_id) == after_first

    # Off for one request, by field or by metadata: the engine generates again, and it is billed.
    request.disable_cache = True
    assert not (await cluster.generate(request, metadata=metadata)).finished.breakdown.cached
    request.disable_cache = False
    off = await cluster.generate(request, metadata=(*metadata, ("x-switchyard-cache", "off")))
    assert not off.finished.breakdown.cached
    assert sum(len(engine.backend.requests) for engine in cluster.all_engines()) == engine_calls + 2
    assert await balance(cluster, key_id) < after_first


async def test_a_sampled_request_is_never_cached(accounted):
    cluster = await accounted()
    _, metadata = await new_key(cluster)
    request = generate_request(prompt_input("hi", max_tokens=3, temperature=1.0), model="acme/fast")
    for _ in range(2):
        await cluster.generate(request, metadata=metadata)
    assert sum(len(engine.backend.requests) for engine in cluster.engines["acme/fast"]) == 2


# --- the request log ----------------------------------------------------------------------------


async def test_each_request_is_logged_with_its_text_unless_disable_log(accounted):
    cluster = await accounted()
    key_id, metadata = await new_key(cluster, reveal_model_names=True)
    request = generate_request(
        prompt_input("Tell me a story.", max_tokens=4, ignore_eos=True),
        model="acme/fast",
        request_id="logged-1",
        customer_identifier="customer-7",
        stream=True,
    )
    request.metadata.update({"team": "search"})
    reply = await cluster.generate(request, metadata=metadata)
    row = await logged(cluster, key_id, "logged-1")
    assert (row.status_code, row.model, row.provider, row.customer_identifier) == (
        200,
        "acme/fast",
        "acme",
        "customer-7",
    )
    assert row.metadata == {"team": "search"}
    assert (row.completion_tokens, row.stream, row.attempts, row.cached) == (4, True, 1, False)
    assert row.completions == [reply.text()]
    assert row.request.prompt.text == "Tell me a story."
    assert row.category and row.routing_time is not None and row.time_to_first_token is not None

    request.request_id, request.disable_log = "logged-2", True
    await cluster.generate(request, metadata=metadata)
    row = await logged(cluster, key_id, "logged-2")
    assert row.log_disabled and row.request is None and row.completions is None
    assert row.completion_tokens == 4, "metrics are kept"


async def test_accounts_service_is_served_beside_the_router(accounted):
    cluster = await accounted()
    _, metadata = await new_key(cluster)
    for _ in range(2):
        await cluster.generate(generate_request(prompt_input("hi", max_tokens=2)), metadata=metadata)
    await cluster.router.accounting.flush_log()
    usage = await accounts_grpc.AccountsServiceStub(cluster.channel).GetUsage(
        accounts_pb2.GetUsageRequest(), metadata=metadata
    )
    assert (usage.total.requests, usage.total.completion_tokens) == (2, 4)
    assert [bucket.model for bucket in usage.buckets] == ["redacted"]
    health = await health_pb2_grpc.HealthStub(cluster.channel).Check(
        health_pb2.HealthCheckRequest(service=ACCOUNTS_SERVICE)
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_requests_running_when_the_router_stops_are_settled_and_logged(accounted):
    cluster = await accounted(SLOW)
    key_id, metadata = await new_key(cluster, credits=1.0)
    call = cluster.stub.Generate(
        generate_request(prompt_input("go on", max_tokens=500, ignore_eos=True), request_id="at-stop"),
        metadata=metadata,
    )
    async for event in call:
        if event.HasField("delta"):
            break
    accounting = cluster.router.accounting
    stopping = asyncio.ensure_future(cluster.router.stop(0))
    with pytest.raises(grpc.aio.AioRpcError):
        await consume(call)
    await stopping
    # The database is closed now; a fresh state layer on the same file reads what was written.
    reopened = Accounting(accounting.settings)
    await reopened.start()
    try:
        viewer = (await reopened.keys.get(key_id)).principal
        row = await reopened.log.get_request(viewer, "at-stop")
        assert row.completion_tokens >= 1
        assert (await reopened.keys.get(key_id)).balance_nanocredits == 1_000_000_000 - row.cost_nanocredits
    finally:
        await reopened.close()
