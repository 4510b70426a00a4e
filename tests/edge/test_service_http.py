"""Models, health, request ids and what the edge tells the router about the caller."""

from __future__ import annotations

import openai
import pytest

from tests.edge.conftest import API_KEY, AUTH, Edge, start_edge
from tests.openai_schema import assert_matches


async def test_models_are_listed_and_retrievable_by_ids_with_slashes(edge: Edge):
    client = edge.openai()
    models = await client.models.list()
    assert [m.id for m in models.data] == ["switchyard/sim", "acme/big:2"]
    assert (await client.models.retrieve("acme/big:2")).owned_by == "acme"
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("nobody/nothing")
    assert caught.value.response.json()["error"]["code"] == "model_not_found"

    async with edge.http(headers=AUTH) as http:
        listed = await http.get("/v1/models")
        one = await http.get("/v1/models/switchyard/sim")
    assert_matches("ListModelsResponse", listed.json())
    assert_matches("Model", one.json())


async def test_health_needs_no_key_and_follows_the_router(edge: Edge, router_server):
    async with edge.http() as http:
        response = await http.get("/health")
    assert response.status_code == 200

    server, _ = router_server
    await server.set_serving(False)
    try:
        async with edge.http() as http:
            response = await http.get("/health")
    finally:
        await server.set_serving(True)
    assert response.status_code == 503
    assert_matches("ErrorResponse", response.json())


async def test_an_edge_whose_router_is_unreachable_is_unhealthy_and_answers_503(router_server):
    # A port nobody listens on: the router is "down".
    lonely = await start_edge(router_port=1)
    try:
        async with Edge(f"http://127.0.0.1:{lonely.port}", router_server[1], lonely).http() as http:
            health = await http.get("/health")
            generate = await http.post("/v1/completions", json={"prompt": "x"}, headers=AUTH)
    finally:
        await lonely.stop()
    assert health.status_code == 503
    assert generate.status_code == 503 and generate.headers["retry-after"]
    assert_matches("ErrorResponse", generate.json())
    assert "127.0.0.1:1" not in generate.text, "transport details stay inside"


async def test_request_id_is_accepted_echoed_and_forwarded(edge: Edge):
    response = await edge.post("/v1/completions", {"prompt": "x"}, headers={"x-request-id": "req-abc.1"})
    assert response.headers["x-request-id"] == "req-abc.1"
    again = await edge.post("/v1/completions", {"prompt": "x"}, headers={"x-request-id": "req-abc.1"})
    assert again.headers["x-request-id"] == "req-abc.1"
    # The response id is the response's own, unique even when a caller reuses its request id.
    assert response.json()["id"].startswith("cmpl-") and response.json()["id"] != again.json()["id"]
    call = edge.router.calls[-1]
    assert call.metadata["x-request-id"] == "req-abc.1" and call.request.request_id == "req-abc.1"
    assert call.metadata["authorization"] == f"Bearer {API_KEY}"

    response = await edge.post("/v1/completions", {"prompt": ["a", "b"]}, headers={"x-request-id": "req-two"})
    call = edge.router.calls[-1]
    assert call.metadata["x-request-id"] == "req-two" and call.request.request_id == "req-two"

    # An unusable id (spaces, too long) is replaced by a new one; errors carry an id too.
    response = await edge.post("/v1/chat/completions", {"messages": []}, headers={"x-request-id": "not ok"})
    assert response.status_code == 400
    made = response.headers["x-request-id"]
    assert made and made != "not ok"


async def test_keys_are_the_routers_business_the_edge_only_forwards_them(edge: Edge):
    client = edge.openai(api_key="sy-made-with-switchyard-keys")
    with pytest.raises(openai.AuthenticationError):
        await client.completions.create(model="auto", prompt="x")
    # Made on the router (switchyard keys create): the edge, never told, serves it at once.
    edge.router.api_keys.add("sy-made-with-switchyard-keys")
    await client.completions.create(model="auto", prompt="x")
    assert edge.router.calls[-1].metadata["authorization"] == "Bearer sy-made-with-switchyard-keys"
