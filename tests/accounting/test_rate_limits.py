"""Per-key rate limits and the x-ratelimit-* headers OpenAI clients read."""

from __future__ import annotations

import pytest

from services.common.errors import RateLimitExceededError
from services.router.accounting import FREE, Principal
from services.router.accounting.rate_limits import RateLimiter, format_duration

from .conftest import FakeClock, new_key


def key(**limits) -> Principal:
    return Principal(key_id="key_1", name="t", **limits)


def test_requests_per_minute_burst_then_refill():
    clock = FakeClock()
    limiter = RateLimiter(clock)
    principal = key(requests_per_minute=3)
    for remaining in (2, 1, 0):
        _, headers = limiter.acquire(principal, 0)
        assert headers["x-ratelimit-remaining-requests"] == str(remaining)
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-reset-requests"] == "1m0s"  # three requests at one per 20 s

    with pytest.raises(RateLimitExceededError) as refused:
        limiter.acquire(principal, 0)
    metadata = refused.value.metadata
    assert metadata["retry_after"] == "20"
    assert metadata["limit"] == "requests"
    assert metadata["x-ratelimit-remaining-requests"] == "0"

    clock.advance(20)
    _, headers = limiter.acquire(principal, 0)
    assert headers["x-ratelimit-remaining-requests"] == "0"


def test_tokens_per_minute_count_the_estimate_and_refund_the_unused_part():
    clock = FakeClock()
    limiter = RateLimiter(clock)
    principal = key(tokens_per_minute=1000)
    ticket, headers = limiter.acquire(principal, 600)
    assert headers["x-ratelimit-remaining-tokens"] == "400"
    assert headers["x-ratelimit-reset-tokens"] == "36s"
    with pytest.raises(RateLimitExceededError) as refused:
        limiter.acquire(principal, 600)
    assert refused.value.metadata["limit"] == "tokens"
    assert refused.value.metadata["retry_after"] == "12"  # 200 tokens short at 1000/60 per second

    limiter.release(ticket, used_tokens=100)  # it used 100 of the 600 it might have
    _, headers = limiter.acquire(principal, 600)
    assert headers["x-ratelimit-remaining-tokens"] == "300"


def test_a_request_larger_than_the_whole_minute_has_no_retry_after():
    limiter = RateLimiter(FakeClock())
    with pytest.raises(RateLimitExceededError) as refused:
        limiter.acquire(key(tokens_per_minute=100), 101)
    assert "retry_after" not in refused.value.metadata
    assert "Request too large" in refused.value.message


def test_concurrency_is_released_when_a_request_ends():
    limiter = RateLimiter(FakeClock())
    principal = key(max_concurrent_requests=2)
    first, _ = limiter.acquire(principal, 0)
    limiter.acquire(principal, 0)
    with pytest.raises(RateLimitExceededError) as refused:
        limiter.acquire(principal, 0)
    assert refused.value.metadata["limit"] == "concurrency"
    assert refused.value.metadata["retry_after"] == "1"
    limiter.release(first, used_tokens=0)
    limiter.acquire(principal, 0)


def test_a_request_that_never_ran_does_not_count():
    limiter = RateLimiter(FakeClock())
    principal = key(requests_per_minute=1, tokens_per_minute=100)
    ticket, _ = limiter.acquire(principal, 50)
    limiter.release(ticket, used_tokens=None)
    _, headers = limiter.acquire(principal, 50)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-remaining-tokens"] == "50"


def test_keys_without_limits_get_no_headers_and_no_refusals():
    limiter = RateLimiter(FakeClock())
    for _ in range(1000):
        _, headers = limiter.acquire(key(), 10**6)
    assert headers == {}


def test_a_changed_limit_applies_to_the_next_request():
    limiter = RateLimiter(FakeClock())
    limiter.acquire(key(requests_per_minute=10), 0)
    _, headers = limiter.acquire(key(requests_per_minute=2), 0)
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"


def test_reset_durations_read_like_openais():
    assert format_duration(0.02) == "20ms"
    assert format_duration(1) == "1s"
    assert format_duration(59.2) == "1m0s"
    assert format_duration(360) == "6m0s"


async def test_admission_applies_the_keys_limits_and_returns_the_headers(accounting, clock):
    _, secret = await new_key(accounting, requests_per_minute=2, tokens_per_minute=1000)
    principal = await accounting.authenticate(secret)

    async def admit(request_id: str):
        return await accounting.admit(
            principal,
            request_id=request_id,
            model="acme/m",
            prices=FREE,
            prompt_tokens=10,
            max_completion_tokens=90,
        )

    first = await admit("a")
    assert first.rate_limit_headers == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "30s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "6s",
    }
    await admit("b")
    with pytest.raises(RateLimitExceededError) as refused:
        await admit("c")
    assert refused.value.metadata["retry_after"] == "30"
    # The edge turns the metadata into a 429 with Retry-After and the same headers.
    assert refused.value.metadata["x-ratelimit-remaining-requests"] == "0"
    clock.advance(30)
    await admit("d")
