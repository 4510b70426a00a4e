"""Accounts end to end, as a new user meets them through the official SDK and plain HTTP: a key is
made (by an admin over AccountsService, or with `switchyard keys create`), spends credits, hits its
limits, reads its usage and request log, gets a repeated request from the response cache, and pays
for the part of a stream it cancelled. Every error body is checked against OpenAI's schema."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
import httpx
import openai
import pytest

from services.router.accounting import Prices
from switchyard.router.v1 import accounts_service_pb2 as accounts_pb2
from switchyard.router.v1 import accounts_service_pb2_grpc as accounts_grpc
from tests.e2e.conftest import API_KEY, FAST_MODEL, SLOW_MODEL, Suite
from tests.openai_schema import assert_matches

# Both models of the suite's registry cost 1 credit per million prompt tokens and 2 per million
# completion tokens.
PRICES = Prices(1.0, 2.0)
CHAT = [{"role": "user", "content": "Name three rivers."}]
T = TypeVar("T")


@dataclass
class User:
    suite: Suite
    key: str
    key_id: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.suite.base_url}/v1", api_key=self.key, max_retries=0)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.suite.base_url, headers=self.auth, timeout=30)

    async def get(self, path: str, **params) -> httpx.Response:
        async with self.http() as http:
            return await http.get(path, params=params)

    async def balance_nanocredits(self) -> int:
        response = await self.get("/v1/usage")
        assert response.status_code == 200, response.text
        return round(response.json()["balance"] * 1e9)

    async def balance_becomes(self, expected: Callable[[int], bool]) -> int:
        """The balance once `expected(balance)` holds: a response does not wait for its bill to be
        written, so the balance catches up a moment later."""

        async def fetch() -> int | None:
            balance = await self.balance_nanocredits()
            return balance if expected(balance) else None

        return await eventually(fetch)

    async def logged(self, request_id: str) -> dict:
        """The request's log entry, once the router has written it (the log is written in batches)."""

        async def fetch() -> dict | None:
            response = await self.get(f"/v1/requests/{request_id}")
            return response.json() if response.status_code == 200 else None

        return await eventually(fetch)


async def eventually(fetch: Callable[[], Awaitable[T | None]], within: float = 10.0) -> T:
    """Polls `fetch` until it returns something; fails after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (result := await fetch()) is None:
        assert loop.time() < deadline, f"nothing within {within}s"
        await asyncio.sleep(0.02)
    return result


async def new_user(suite: Suite, name: str, credits: float = 1.0, **policy) -> User:
    """A key made the way an operator makes one for a customer: CreateApiKey with an admin key."""
    async with grpc.aio.insecure_channel(suite.router_address) as channel:
        created = await accounts_grpc.AccountsServiceStub(channel).CreateApiKey(
            accounts_pb2.CreateApiKeyRequest(name=name, credits=credits, **policy),
            metadata=(("authorization", f"Bearer {API_KEY}"),),
        )
    return User(suite, created.secret, created.api_key.id)


# --- keys ---------------------------------------------------------------------------------------


async def test_a_key_made_with_switchyard_keys_create_works_at_once(suite: Suite):
    database = suite.router.settings.accounting.database_url
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "keys", "create", "--database", database,
        "--name", "from-the-cli", "--credits", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr
    key = stdout.decode().strip()
    user = User(suite, key, stderr.decode().split()[1])

    completion = await user.client().chat.completions.create(model=FAST_MODEL, messages=CHAT, max_tokens=4)
    assert completion.choices[0].message.content
    await user.balance_becomes(lambda balance: balance < 2_000_000_000)


async def test_a_key_may_be_limited_to_some_models(suite: Suite):
    user = await new_user(suite, "fast-only", allowed_models=[FAST_MODEL])
    with pytest.raises(openai.NotFoundError) as caught:
        await user.client().chat.completions.create(model=SLOW_MODEL, messages=CHAT, max_tokens=2)
    assert_matches("ErrorResponse", caught.value.response.json())
    assert caught.value.response.json()["error"]["param"] == "model"
    assert caught.value.response.json()["error"]["code"] == "model_not_found"
    # GET /v1/models/{id} does not confirm it exists either, as OpenAI answers.
    with pytest.raises(openai.NotFoundError):
        await user.client().models.retrieve(SLOW_MODEL)
    # Left to choose, the router picks among the models the key may use; and lists only those.
    routed = await user.client().chat.completions.create(model="auto", messages=CHAT, max_tokens=2)
    assert routed.choices[0].message.content
    assert [model.id for model in (await user.client().models.list()).data] == [FAST_MODEL]


# --- credits ------------------------------------------------------------------------------------


async def test_spending_lowers_the_balance_by_exactly_the_priced_usage(suite: Suite):
    user = await new_user(suite, "spender", credits=1.0)
    before = await user.balance_nanocredits()
    completion = await user.client().chat.completions.create(
        model=FAST_MODEL,
        messages=CHAT,
        max_tokens=9,
        extra_body={"ignore_eos": True, "request_breakdown": True},
    )
    usage = completion.usage
    cost = PRICES.cost(usage.prompt_tokens, usage.completion_tokens)
    assert usage.completion_tokens == 9
    await user.balance_becomes(lambda balance: balance == before - cost)
    assert completion.model_extra["request_breakdown"]["cost"] == pytest.approx(cost / 1e9)


async def test_out_of_credits_is_429_insufficient_quota(suite: Suite):
    user = await new_user(suite, "broke", credits=0.000001)
    with pytest.raises(openai.RateLimitError) as caught:
        await user.client().chat.completions.create(model=FAST_MODEL, messages=CHAT, max_tokens=100)
    response = caught.value.response
    body = response.json()
    assert_matches("ErrorResponse", body)
    assert (body["error"]["type"], body["error"]["code"]) == ("insufficient_quota", "insufficient_quota")
    assert response.headers["x-should-retry"] == "false", "no SDK retries a request no wait will fund"
    assert await user.balance_nanocredits() == 1_000, "a refused request costs nothing"


# --- limits -------------------------------------------------------------------------------------


async def test_a_rate_limit_is_429_with_retry_after_and_openais_headers(suite: Suite):
    user = await new_user(suite, "paced", requests_per_minute=2)
    first = await user.client().chat.completions.with_raw_response.create(
        model=FAST_MODEL, messages=CHAT, max_tokens=2
    )
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    async with user.http() as http:
        streamed = await http.post(
            "/v1/chat/completions",
            json={"model": FAST_MODEL, "messages": CHAT, "max_tokens": 2, "stream": True},
        )
    assert streamed.status_code == 200 and streamed.headers["x-ratelimit-remaining-requests"] == "0"

    with pytest.raises(openai.RateLimitError) as caught:
        await user.client().chat.completions.create(model=FAST_MODEL, messages=CHAT, max_tokens=2)
    response = caught.value.response
    assert_matches("ErrorResponse", response.json())
    assert (response.json()["error"]["type"], response.json()["error"]["code"]) == (
        "requests",
        "rate_limit_exceeded",
    )
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.headers["x-ratelimit-reset-requests"].endswith("s")


async def test_a_request_with_several_prompts_is_one_request_everywhere(suite: Suite):
    """Rate limits, credits and the request log count a prompt list as OpenAI does: one request."""
    user = await new_user(suite, "batcher", credits=1.0, requests_per_minute=2)
    before = await user.balance_nanocredits()
    raw = await user.client().completions.with_raw_response.create(
        model=FAST_MODEL, prompt=["one", "two two", "three three three"], n=2, max_tokens=3,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    completion = raw.parse()
    assert [choice.index for choice in completion.choices] == list(range(6))
    assert raw.headers["x-ratelimit-remaining-requests"] == "1", "admitted and counted once"
    usage = completion.usage
    assert usage.completion_tokens == 3 * 2 * 3
    await user.balance_becomes(
        lambda balance: balance == before - PRICES.cost(usage.prompt_tokens, usage.completion_tokens)
    )

    logged = await user.logged(raw.headers["x-request-id"])
    assert logged["status_code"] == 200
    assert logged["usage"]["prompt_tokens"] == usage.prompt_tokens
    assert logged["completions"] == [choice.text for choice in completion.choices]
    listed = (await user.get("/v1/requests")).json()
    assert len(listed["data"]) == 1, "one request log row for the three prompts"

    # The second request of the minute is admitted too: the three prompts were one.
    second = await user.client().completions.create(model=FAST_MODEL, prompt=["a", "b", "c"], max_tokens=1)
    assert len(second.choices) == 3
    with pytest.raises(openai.RateLimitError):
        await user.client().completions.create(model=FAST_MODEL, prompt=["a", "b"], max_tokens=1)


# --- usage and the request log ------------------------------------------------------------------


async def test_usage_and_the_request_log_read_back_what_was_spent_with_names_redacted(suite: Suite):
    user = await new_user(suite, "reader")
    client = user.client()
    kept = await client.chat.completions.with_raw_response.create(
        model=FAST_MODEL, messages=CHAT, max_tokens=3,
        extra_body={"customer_identifier": "customer-1", "metadata": {"team": "search"}},
    )  # fmt: skip
    secret = await client.chat.completions.with_raw_response.create(
        model=FAST_MODEL, messages=CHAT, max_tokens=3, extra_body={"disable_log": True}
    )

    logged = await user.logged(kept.headers["x-request-id"])
    assert (logged["status_code"], logged["model"], logged["provider"]) == (200, "redacted", None)
    assert (logged["customer_identifier"], logged["metadata"]) == ("customer-1", {"team": "search"})
    assert logged["completions"] == [kept.parse().choices[0].message.content]
    assert logged["request"]["chat"]["messages"][0]["content"] == CHAT[0]["content"]
    assert logged["usage"]["completion_tokens"] == kept.parse().usage.completion_tokens

    hidden = await user.logged(secret.headers["x-request-id"])
    assert hidden["log_disabled"] and hidden["request"] is None and hidden["completions"] is None
    assert hidden["usage"]["completion_tokens"] == secret.parse().usage.completion_tokens, "metrics are kept"

    usage = (await user.get("/v1/usage")).json()
    assert usage["total"]["requests"] == 2
    assert {(b["model"], b["customer_identifier"]) for b in usage["data"]} == {
        ("redacted", "customer-1"),
        ("redacted", None),
    }
    listed = (await user.get("/v1/requests", customer_identifier="customer-1")).json()
    assert [entry["id"] for entry in listed["data"]] == [kept.headers["x-request-id"]]
    assert listed["has_more"] is False

    # Another key's log is not this key's business.
    other = await new_user(suite, "nosy")
    assert (await other.get(f"/v1/requests/{kept.headers['x-request-id']}")).status_code == 404
    assert (await other.get("/v1/usage", key_id=user.key_id)).status_code == 403


async def test_a_key_that_may_see_model_names_sees_them_in_its_log(suite: Suite):
    user = await new_user(suite, "insider", reveal_model_names=True)
    raw = await user.client().chat.completions.with_raw_response.create(
        model=FAST_MODEL, messages=CHAT, max_tokens=2
    )
    assert raw.parse().model == FAST_MODEL
    assert (await user.logged(raw.headers["x-request-id"]))["model"] == FAST_MODEL
    assert (await user.get("/v1/requests", model=FAST_MODEL)).json()["data"][0]["model"] == FAST_MODEL


# --- the response cache -------------------------------------------------------------------------


async def stream_first_chunk_then_rest(user: User, body: dict, during: Callable[[], Awaitable[int]]):
    """Streams `body`; after the first chunk asks `during()`; returns its answer and the chunks."""
    chunks = []
    async with user.http() as http:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            async for line in lines:
                if line.startswith("data: {"):
                    chunks.append(json.loads(line.removeprefix("data: ")))
                    break
            observed = await during()
            async for line in lines:
                if line.startswith("data: {"):
                    chunks.append(json.loads(line.removeprefix("data: ")))
    return observed, chunks


def streamed_text(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def streamed_breakdown(chunks: list[dict]) -> dict:
    return next(
        choice["request_breakdown"]
        for chunk in chunks
        for choice in chunk["choices"]
        if "request_breakdown" in choice
    )


async def test_a_repeat_comes_from_the_cache_free_and_without_engine_work(suite: Suite):
    user = await new_user(suite, "repeater")
    body = {
        "model": SLOW_MODEL, "messages": CHAT, "max_tokens": 6, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True}, "request_breakdown": True,
    }  # fmt: skip

    async def engine_busy() -> int:
        return await suite.running_requests(suite.slow_engine)

    running, first = await stream_first_chunk_then_rest(user, body, engine_busy)
    assert running == 1, "the first answer is generated by the engine"
    assert await suite.wait_until_idle(suite.slow_engine) == 0
    first_cost = PRICES.cost(first[-1]["usage"]["prompt_tokens"], first[-1]["usage"]["completion_tokens"])
    after_first = await user.balance_becomes(lambda balance: balance == 1_000_000_000 - first_cost)

    running, again = await stream_first_chunk_then_rest(user, body, engine_busy)
    assert running == 0, "the repeat never reaches the engine"
    assert streamed_text(again) == streamed_text(first)
    breakdown = streamed_breakdown(again)
    assert (breakdown["cached"], breakdown["cost"]) == (True, 0)
    usage = again[-1]["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] > 0
    assert await user.balance_nanocredits() == after_first, "a cache hit costs nothing"

    # Off for one request: the engine generates again, and it is billed.
    running, _ = await stream_first_chunk_then_rest(user, {**body, "cache": False}, engine_busy)
    assert running == 1
    await user.balance_becomes(lambda balance: balance < after_first)


# --- cancellation -------------------------------------------------------------------------------


async def test_a_cancelled_stream_is_billed_for_what_it_generated(suite: Suite):
    user = await new_user(suite, "quitter")
    before = await user.balance_nanocredits()
    body = {"model": SLOW_MODEL, "prompt": "go on", "max_tokens": 400, "stream": True, "ignore_eos": True}
    headers = {"x-request-id": "quit-early"}
    async with user.http() as http:
        async with http.stream("POST", "/v1/completions", json=body, headers=headers) as response:
            received = 0
            async for line in response.aiter_lines():
                received += line.startswith("data: {")
                if received == 4:
                    break
    assert await suite.wait_until_idle(suite.slow_engine) == 0, "the engine stopped generating"

    logged = await user.logged("quit-early")
    completion_tokens = logged["usage"]["completion_tokens"]
    assert logged["status_code"] == 499, "the client closed the request"
    assert 4 <= completion_tokens < 400, "billed for what was generated, not for max_tokens"
    cost = PRICES.cost(logged["usage"]["prompt_tokens"], completion_tokens)
    assert round(logged["cost"] * 1e9) == cost
    await user.balance_becomes(lambda balance: balance == before - cost)
