"""What accounting looks like at the edge: rate-limit headers on answers, the per-request cache
switch, and GET /v1/usage, /v1/requests, /v1/requests/{id} over the router's AccountsService
(a scripted double here; the real one in tests/e2e/test_accounts.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from services.edge.errors import ApiError
from services.edge.serving_accounts import list_requests_request, parse_time, usage_request
from switchyard.router.v1 import accounts_service_pb2 as accounts_pb2
from tests.edge.conftest import AUTH, Edge, words_script

CHAT = [{"role": "user", "content": "hi"}]
LIMITS = {
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-limit-tokens": "10000",
    "x-ratelimit-remaining-tokens": "9980",
    "x-ratelimit-reset-tokens": "120ms",
}


def limited():
    """words_script behind the initial metadata the router sends after admitting a request."""

    async def script(request, context):
        await context.send_initial_metadata(tuple(LIMITS.items()))
        async for event in words_script(request, context):
            yield event

    return script


def ratelimit_headers(response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("x-ratelimit-")}


# --- rate-limit headers on answers --------------------------------------------------------------


async def test_answers_carry_the_rate_limit_headers_the_router_sent(edge: Edge):
    edge.router.script = limited()
    response = await edge.post("/v1/chat/completions", {"messages": CHAT})
    assert response.status_code == 200
    assert ratelimit_headers(response) == LIMITS

    async with edge.http() as http:
        body = {"messages": CHAT, "stream": True}
        async with http.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as streamed:
            assert streamed.status_code == 200
            assert ratelimit_headers(streamed) == LIMITS
            await streamed.aread()

    # The OpenAI SDK hands them to callers that pace themselves.
    raw = await edge.openai().chat.completions.with_raw_response.create(model="auto", messages=CHAT)
    assert raw.headers["x-ratelimit-remaining-tokens"] == "9980"


async def test_several_prompts_are_admitted_as_one_request(edge: Edge):
    edge.router.script = limited()
    response = await edge.post("/v1/completions", {"prompt": ["p 0", "p 1", "p 2"]})
    assert len(edge.router.calls) == 1, "one router call: one admission under the rate limits"
    assert ratelimit_headers(response) == LIMITS


async def test_without_limits_there_are_no_rate_limit_headers(edge: Edge):
    response = await edge.post("/v1/completions", {"prompt": "x"})
    assert ratelimit_headers(response) == {}


# --- the cache switch ---------------------------------------------------------------------------


async def test_the_cache_is_switched_off_per_request_by_field_or_header(edge: Edge):
    await edge.post("/v1/chat/completions", {"messages": CHAT, "temperature": 0})
    call = edge.router.calls[-1]
    assert not call.request.disable_cache and "x-switchyard-cache" not in call.metadata

    await edge.post("/v1/chat/completions", {"messages": CHAT, "temperature": 0, "cache": False})
    assert edge.router.calls[-1].request.disable_cache

    await edge.post("/v1/completions", {"prompt": "x"}, headers={"x-switchyard-cache": "OFF"})
    assert edge.router.calls[-1].metadata["x-switchyard-cache"] == "off"


# --- /v1/usage ----------------------------------------------------------------------------------


async def test_usage_is_the_routers_totals_by_day_model_and_customer(edge: Edge):
    accounts = edge.router.accounts
    accounts.usage = accounts_pb2.GetUsageResponse(
        buckets=[
            accounts_pb2.UsageBucket(
                day="2025-03-01",
                model="redacted",
                customer_identifier="acme",
                requests=3,
                prompt_tokens=30,
                completion_tokens=12,
                cached_tokens=10,
                cost=0.25,
                cached_responses=1,
            )
        ],
        total=accounts_pb2.UsageBucket(requests=3, prompt_tokens=30, completion_tokens=12, cost=0.25),
        balance=99.75,
    )
    async with edge.http(headers=AUTH) as http:
        response = await http.get(
            "/v1/usage", params={"start_time": "2025-03-01", "end_time": "1741046400", "key_id": "key_x"}
        )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "usage" and body["balance"] == 99.75
    assert body["data"] == [
        {
            "day": "2025-03-01",
            "model": "redacted",
            "customer_identifier": "acme",
            "requests": 3,
            "cached_responses": 1,
            "prompt_tokens": 30,
            "completion_tokens": 12,
            "total_tokens": 42,
            "prompt_tokens_details": {"cached_tokens": 10},
            "cost": 0.25,
        }
    ]
    assert body["total"]["total_tokens"] == 42 and "day" not in body["total"]

    asked, metadata = accounts.asked[-1]
    assert metadata["authorization"] == AUTH["Authorization"]
    assert asked.start_time.ToDatetime(tzinfo=UTC) == datetime(2025, 3, 1, tzinfo=UTC)
    assert asked.end_time.seconds == 1741046400
    assert asked.key_id == "key_x"


async def test_a_bad_time_is_400_naming_it_before_the_router_is_asked(edge: Edge):
    async with edge.http(headers=AUTH) as http:
        response = await http.get("/v1/usage", params={"end_time": "yesterday"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "end_time"
    assert edge.router.accounts.asked == []


# --- /v1/requests -------------------------------------------------------------------------------


def record(request_id: str, **fields) -> accounts_pb2.RequestRecord:
    created = timestamp_pb2.Timestamp(seconds=1741000000)
    return accounts_pb2.RequestRecord(request_id=request_id, key_id="key_a", create_time=created, **fields)


async def test_the_request_log_is_listed_a_page_at_a_time_with_filters(edge: Edge):
    metadata = struct_pb2.Struct()
    metadata.update({"team": "search"})
    accounts = edge.router.accounts
    accounts.page = accounts_pb2.ListRequestsResponse(
        requests=[
            record(
                "req-2",
                status_code=200,
                model="redacted",
                customer_identifier="acme",
                metadata=metadata,
                prompt_tokens=5,
                completion_tokens=7,
                cost=0.001,
                stream=True,
                attempts=1,
                request_json='{"prompt": {"text": "hi"}}',
                completions=["w0 w1"],
            ),
            record("req-1", status_code=429, error_reason="RATE_LIMIT_EXCEEDED", log_disabled=True),
        ],
        next_page_token="tok-2",
    )
    async with edge.http(headers=AUTH) as http:
        response = await http.get(
            "/v1/requests",
            params={"limit": "2", "customer_identifier": "acme", "status": "200", "page_token": "tok-1"},
        )
    assert response.status_code == 200
    body = response.json()
    assert (body["object"], body["has_more"], body["next_page_token"]) == ("list", True, "tok-2")
    first, second = body["data"]
    assert (first["id"], first["object"], first["created"], first["status_code"]) == (
        "req-2",
        "request",
        1741000000,
        200,
    )
    assert first["usage"]["total_tokens"] == 12 and first["metadata"] == {"team": "search"}
    assert first["request"] == {"prompt": {"text": "hi"}} and first["completions"] == ["w0 w1"]
    assert (second["status_code"], second["error"]) == (429, "rate_limit_exceeded")
    assert second["request"] is None and second["completions"] is None, "disable_log keeps no text"

    asked, _ = accounts.asked[-1]
    assert (asked.page_size, asked.page_token, asked.customer_identifier, asked.status_code) == (
        2,
        "tok-1",
        "acme",
        200,
    )
    assert asked.HasField("status_code") and not asked.HasField("start_time")


@pytest.mark.parametrize(("param", "value"), [("limit", "0"), ("limit", "101"), ("status", "abc")])
async def test_bad_paging_or_filters_are_400_naming_them(edge: Edge, param, value):
    async with edge.http(headers=AUTH) as http:
        response = await http.get("/v1/requests", params={param: value})
    assert response.status_code == 400 and response.json()["error"]["param"] == param


async def test_one_request_by_id_or_404(edge: Edge):
    edge.router.accounts.records["req-9"] = record("req-9", status_code=200, model="acme/fast")
    async with edge.http(headers=AUTH) as http:
        found = await http.get("/v1/requests/req-9")
        missing = await http.get("/v1/requests/req-0")
    assert found.status_code == 200 and found.json()["model"] == "acme/fast"
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"


# --- query parameters, alone --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1741046400", datetime(2025, 3, 4, tzinfo=UTC)),
        ("1741046400.5", datetime(2025, 3, 4, 0, 0, 0, 500000, tzinfo=UTC)),
        ("2025-03-04", datetime(2025, 3, 4, tzinfo=UTC)),
        ("2025-03-04T02:00:00+02:00", datetime(2025, 3, 4, tzinfo=UTC)),
        ("2025-03-04T00:00:00", datetime(2025, 3, 4, tzinfo=UTC)),
    ],
)
def test_times_are_unix_seconds_or_iso_8601_in_utc_unless_they_say_otherwise(value, expected):
    assert parse_time("start_time", value).ToDatetime(tzinfo=UTC) == expected


def test_unset_filters_stay_unset():
    assert not usage_request({}).HasField("start_time")
    listing = list_requests_request({})
    assert not listing.HasField("status_code") and listing.page_size == 0


def test_a_time_that_is_neither_is_refused():
    with pytest.raises(ApiError) as caught:
        parse_time("start_time", "next tuesday")
    assert (caught.value.status, caught.value.param) == (400, "start_time")
