"""A client that leaves, or a deadline that passes, cancels the router call (and so the generation
down to the engine). Real uvicorn, real sockets: the fake router observes its call being cancelled."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.edge.conftest import API_KEY, AUTH, HANG_GUARD, Edge, delta, routed, start_edge
from tests.openai_schema import assert_matches

CHAT = [{"role": "user", "content": "go on"}]


def hang_after(*events):
    """A script that sends `events`, then waits until its call is cancelled."""

    async def script(request, context):
        for event in events:
            yield event
        await asyncio.Event().wait()

    return script


async def cancelled_calls(edge: Edge, count: int) -> None:
    for call in edge.router.calls[:count]:
        await asyncio.wait_for(call.cancelled.wait(), HANG_GUARD)


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/chat/completions", {"messages": CHAT}), ("/v1/completions", {"prompt": ["one", "two"]})],
)
async def test_a_client_gone_mid_stream_cancels_the_router_call(edge: Edge, path, body):
    edge.router.script = hang_after(routed(), delta(0, "first"), delta(0, " second"))
    async with edge.http() as http:
        async with http.stream("POST", path, json={**body, "stream": True}, headers=AUTH) as response:
            texts = 0
            async for line in response.aiter_lines():
                texts += '"first"' in line or '" second"' in line
                if texts == 2:
                    break
    # The router is silent now: only the closed connection can tell the edge.
    await cancelled_calls(edge, 1)


async def test_a_client_gone_before_a_plain_answer_cancels_the_router_call(edge: Edge):
    edge.router.script = hang_after(routed())
    _, writer = await asyncio.open_connection("127.0.0.1", edge.server.port)
    body = json.dumps({"messages": CHAT}).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    call = await edge.router.next_call()
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(call.cancelled.wait(), HANG_GUARD)


async def test_a_request_timeout_answers_504_and_cancels_the_call(edge: Edge):
    edge.router.script = hang_after()
    response = await edge.post("/v1/completions", {"prompt": "x", "timeout": 0.2})
    assert response.status_code == 504
    assert_matches("ErrorResponse", response.json())
    assert response.json()["error"]["type"] == "timeout_error"
    await cancelled_calls(edge, 1)

    response = await edge.post(
        "/v1/chat/completions", {"messages": CHAT}, headers={"x-request-timeout": "0.2"}
    )
    assert response.status_code == 504
    await asyncio.wait_for(edge.router.calls[1].cancelled.wait(), HANG_GUARD)


async def test_a_timeout_while_streaming_is_an_error_event(edge: Edge):
    edge.router.script = hang_after(routed(), delta(0, "slow"))
    events = await edge.stream_events(
        "/v1/chat/completions", {"messages": CHAT, "stream": True, "timeout": 0.2}
    )
    assert_matches("ErrorResponse", events[-1])
    assert events[-1]["error"]["type"] == "timeout_error"
    await cancelled_calls(edge, 1)


async def test_the_edges_limit_caps_what_a_request_asks_for(router_server):
    server, fake = router_server
    fake.reset()
    fake.script = hang_after()
    edge_server = await start_edge(server.port, request_timeout_seconds=0.2)
    try:
        edge = Edge(f"http://127.0.0.1:{edge_server.port}", fake, edge_server)
        response = await edge.post("/v1/completions", {"prompt": "x", "timeout": 3600})
        assert response.status_code == 504
        await cancelled_calls(edge, 1)
        response = await edge.post("/v1/completions", {"prompt": "x"}, headers={"x-request-timeout": "soon"})
        assert response.status_code == 400
    finally:
        await edge_server.stop()
