"""Every failure a client can meet is an OpenAI error object with the right status."""

from __future__ import annotations

import httpx
import openai
import pytest

from services.common.errors import (
    DeadlineExceededError,
    EngineUnavailableError,
    InsufficientQuotaError,
    InvalidApiKeyError,
    ModelNotFoundError,
    RateLimitExceededError,
)
from switchyard.inference.v1 import inference_pb2 as inference
from tests.edge.conftest import AUTH, HANG_GUARD, Edge, delta, routed, start_edge
from tests.openai_schema import assert_matches

CHAT = [{"role": "user", "content": "hi"}]


def failing_before_routing(error: Exception):
    async def script(request, context):
        raise error
        yield  # an async generator, like every Generate script

    return script


async def test_a_key_the_router_refuses_is_401(edge: Edge):
    for call in (
        edge.openai(api_key="sy-wrong").chat.completions.create(model="auto", messages=CHAT),
        edge.openai(api_key="sy-wrong").models.list(),
    ):
        with pytest.raises(openai.AuthenticationError) as caught:
            await call
        body = caught.value.response.json()
        assert_matches("ErrorResponse", body)
        assert (body["error"]["type"], body["error"]["code"]) == ("authentication_error", "invalid_api_key")


async def test_a_request_without_a_key_is_401_before_its_body_is_read(edge: Edge):
    async with edge.http() as http:
        for path, method in [
            ("/v1/completions", "POST"),
            ("/v1/chat/completions", "POST"),
            ("/v1/models", "GET"),
            ("/v1/usage", "GET"),
            ("/v1/requests", "GET"),
        ]:
            response = await http.request(method, path, json={"prompt": "x"})
            assert response.status_code == 401, path
            assert_matches("ErrorResponse", response.json())
            assert response.json()["error"]["code"] == "invalid_api_key"
    assert edge.router.calls == [], "a request without a key never reaches the router"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("body", [b"{not json", b'{"prompt": "x", "messages": [], "temperature": 5}'])
async def test_a_wrong_key_is_401_even_when_the_body_is_bad_too(edge: Edge, path, body):
    headers = {"Authorization": "Bearer sy-wrong", "content-type": "application/json"}
    async with edge.http() as http:
        response = await http.post(path, content=body, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


async def test_the_key_is_checked_separately_only_for_a_body_that_is_refused(edge: Edge):
    await edge.openai().chat.completions.create(model="auto", messages=CHAT)
    assert edge.router.key_checks == 0, "a good request costs no extra router call"
    with pytest.raises(openai.BadRequestError):
        await edge.openai().chat.completions.create(model="auto", messages=CHAT, temperature=5)
    assert edge.router.key_checks == 1


async def test_a_bad_parameter_is_400_naming_it(edge: Edge):
    with pytest.raises(openai.BadRequestError) as caught:
        await edge.openai().chat.completions.create(model="auto", messages=CHAT, temperature=5)
    body = caught.value.response.json()
    assert_matches("ErrorResponse", body)
    assert body["error"]["param"] == "temperature"

    with pytest.raises(openai.BadRequestError) as caught:
        await edge.openai().completions.create(model="auto", prompt="x", n=2, best_of=1)
    assert caught.value.response.json()["error"]["param"] == "best_of"


async def test_malformed_json_is_400(edge: Edge):
    async with edge.http() as http:
        response = await http.post(
            "/v1/chat/completions", content=b"{not json", headers={**AUTH, "content-type": "application/json"}
        )
    assert response.status_code == 400
    assert_matches("ErrorResponse", response.json())


async def test_unknown_routes_and_methods_are_openai_errors(edge: Edge):
    async with edge.http() as http:
        missing = await http.post("/v1/embeddings", json={}, headers=AUTH)
        wrong_method = await http.get("/v1/chat/completions", headers=AUTH)
    assert missing.status_code == 404
    assert_matches("ErrorResponse", missing.json())
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["allow"]
    assert_matches("ErrorResponse", wrong_method.json())


async def test_a_trailing_slash_is_not_found_rather_than_redirected_and_health_answers_head(edge: Edge):
    async with edge.http() as http:
        slashed = await http.post("/v1/chat/completions/", json={}, headers=AUTH)
        head = await http.head("/health")
    assert slashed.status_code == 404
    assert_matches("ErrorResponse", slashed.json())
    assert head.status_code == 200 and head.content == b""


@pytest.mark.parametrize(
    ("error", "sdk_error", "status", "code"),
    [
        (ModelNotFoundError("nobody/nothing"), openai.NotFoundError, 404, "model_not_found"),
        (InvalidApiKeyError("revoked key"), openai.AuthenticationError, 401, "invalid_api_key"),
        (InsufficientQuotaError("no credits left"), openai.RateLimitError, 429, "insufficient_quota"),
        (EngineUnavailableError("draining"), openai.InternalServerError, 503, "engine_unavailable"),
        (RuntimeError("secret internals at /srv/x.py"), openai.InternalServerError, 500, None),
    ],
)
async def test_router_refusals_keep_their_status_even_when_streaming(
    edge: Edge, error, sdk_error, status, code
):
    edge.router.script = failing_before_routing(error)
    with pytest.raises(sdk_error) as caught:
        await edge.openai().chat.completions.create(model="nobody/nothing", messages=CHAT)
    body = caught.value.response.json()
    assert_matches("ErrorResponse", body)
    assert (caught.value.status_code, body["error"]["code"]) == (status, code)
    assert "secret" not in body["error"]["message"]

    # A refusal before the first event is still an HTTP status, not a 200 stream.
    async with edge.http() as http:
        response = await http.post(
            "/v1/chat/completions", json={"messages": CHAT, "stream": True}, headers=AUTH
        )
    assert response.status_code == status


async def test_rate_limits_say_when_to_retry(edge: Edge):
    edge.router.script = failing_before_routing(
        RateLimitExceededError(
            "slow down",
            metadata={"retry_after": "7", "limit": "requests", "x-ratelimit-remaining-requests": "0"},
        )
    )
    response = await edge.post("/v1/completions", {"prompt": "x"})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert (response.json()["error"]["type"], response.json()["error"]["code"]) == (
        "requests",
        "rate_limit_exceeded",
    )


async def test_an_error_after_the_stream_started_is_one_error_event_then_done(edge: Edge):
    async def breaks_mid_stream(request, context):
        yield routed()
        yield delta(0, "partial")
        raise EngineUnavailableError("the engine died")

    edge.router.script = breaks_mid_stream
    events = await edge.stream_events("/v1/chat/completions", {"messages": CHAT, "stream": True})
    *chunks, last = events
    assert chunks[-1]["choices"][0]["delta"] == {"content": "partial"}
    assert_matches("ErrorResponse", last)
    assert (last["error"]["type"], last["error"]["code"]) == ("server_error", "engine_unavailable")

    with pytest.raises(openai.APIError):
        stream = await edge.openai().completions.create(model="auto", prompt="x", stream=True)
        async for _ in stream:
            pass


@pytest.mark.parametrize(
    ("path", "body"), [("/v1/chat/completions", {"messages": CHAT}), ("/v1/completions", {"prompt": "x"})]
)
async def test_a_deadline_after_the_last_token_never_follows_a_finish_reason(edge: Edge, path, body):
    async def deadline_before_finished(request, context):
        yield routed()
        yield delta(0, "all")
        yield delta(0, " done", inference.FINISH_REASON_STOP)
        raise DeadlineExceededError("The request's deadline passed while it was generated.")

    edge.router.script = deadline_before_finished
    events = await edge.stream_events(path, {**body, "stream": True})
    *chunks, last = events
    assert last["error"]["type"] == "timeout_error"
    assert all(choice["finish_reason"] is None for chunk in chunks for choice in chunk["choices"])


async def test_a_stream_that_ends_without_finishing_is_a_server_error(edge: Edge):
    async def truncated(request, context):
        yield routed()
        yield delta(0, "half", 0)

    edge.router.script = truncated
    response = await edge.post("/v1/chat/completions", {"messages": CHAT})
    assert response.status_code == 500
    assert_matches("ErrorResponse", response.json())

    events = await edge.stream_events("/v1/completions", {"prompt": "x", "stream": True})
    assert events[-1]["error"]["type"] == "server_error"


async def test_the_router_out_of_contract_never_leaks_a_traceback(edge: Edge):
    async def choice_out_of_range(request, context):
        yield routed()
        yield delta(5, "no such choice", inference.FINISH_REASON_STOP)

    edge.router.script = choice_out_of_range
    response = await edge.post("/v1/chat/completions", {"messages": CHAT})
    assert response.status_code == 500
    assert_matches("ErrorResponse", response.json())
    assert "Traceback" not in response.text and "IndexError" not in response.text
    assert response.headers["x-request-id"]


async def test_a_body_over_the_size_limit_is_413_and_never_reaches_the_router(edge: Edge, router_server):
    small = await start_edge(router_server[0].port, max_body_bytes=1024)
    big = {"prompt": "word " * 1000}

    async def chunked():
        yield b'{"prompt": "'
        for _ in range(100):
            yield b"word " * 20
        yield b'"}'

    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{small.port}", timeout=HANG_GUARD) as http:
            declared = await http.post("/v1/completions", json=big, headers=AUTH)
            headers = {**AUTH, "content-type": "application/json"}
            streamed = await http.post("/v1/chat/completions", content=chunked(), headers=headers)
            fits = await http.post("/v1/completions", json={"prompt": "word"}, headers=AUTH)
    finally:
        await small.stop()
    for response in (declared, streamed):
        assert response.status_code == 413
        assert_matches("ErrorResponse", response.json())
        assert "1024 bytes" in response.json()["error"]["message"]
    assert fits.status_code == 200
    assert len(edge.router.calls) == 1, "only the body within the limit reached the router"
