"""Per-key limits: requests per minute, tokens per minute and concurrent requests.

Each per-minute limit is a token bucket that holds a minute's allowance and refills continuously,
the way OpenAI's limits behave: a key may burst its whole minute at once, then proceeds at the
steady rate. Tokens are counted up front as prompt + the most the request may generate, and the
unused part is given back when it ends.

State is in this router's memory. With several routers behind a load balancer each enforces the
limits alone, so a key can get up to N times its limit across N routers; a shared limiter
(PostgreSQL or Redis) is what would close that gap.

Headers: `headers()` are OpenAI's x-ratelimit-* response headers (limit, remaining, reset; for
requests and tokens, only for the limits the key has). A refusal carries them in the error's
metadata, plus `retry_after` in whole seconds, for the edge's 429 and its Retry-After header.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.common.errors import RateLimitExceededError
from services.router.accounting.keys import Principal


@dataclass(slots=True)
class TokenBucket:
    capacity: float
    refill_per_second: float
    level: float
    updated: float

    @classmethod
    def per_minute(cls, limit: int, now: float) -> TokenBucket:
        return cls(capacity=limit, refill_per_second=limit / 60.0, level=limit, updated=now)

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.refill_per_second)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available (0: now)."""
        return max(0.0, (amount - self.level) / self.refill_per_second)

    def seconds_until_full(self) -> float:
        return (self.capacity - self.level) / self.refill_per_second

    def resize(self, limit: int) -> None:
        """A key's limit changed: keep what was used, under the new ceiling."""
        used = self.capacity - self.level
        self.capacity, self.refill_per_second = limit, limit / 60.0
        self.level = max(0.0, limit - used)


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: "20ms", "1s", "6m0s"."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass(slots=True)
class _KeyState:
    requests: TokenBucket | None = None
    tokens: TokenBucket | None = None
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class RateLimitTicket:
    """One admitted request: what to give back when it ends."""

    key_id: str
    tokens: int


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}

    def acquire(self, principal: Principal, tokens: int) -> tuple[RateLimitTicket, dict[str, str]]:
        """Admits one request that may use `tokens`, or raises RateLimitExceededError. Returns the
        ticket for `release` and the x-ratelimit-* headers after the admission."""
        now = self._clock()
        state = self._state(principal, now)
        limit = principal.max_concurrent_requests
        if limit is not None and state.in_flight >= limit:
            # No way to know when a running request ends; one second is a polite guess.
            raise self._refusal(
                f"Too many concurrent requests for this key: the limit is {limit}.", state, "concurrency", 1.0
            )
        if state.requests is not None and state.requests.level < 1:
            raise self._refusal(
                f"Rate limit reached for requests: {principal.requests_per_minute} per minute.",
                state,
                "requests",
                state.requests.wait_for(1),
            )
        if state.tokens is not None:
            if tokens > state.tokens.capacity:
                # Waiting does not help a request bigger than the whole minute: no retry_after.
                raise self._refusal(
                    f"Request too large: it may use {tokens} tokens and the key's limit is "
                    f"{principal.tokens_per_minute} tokens per minute. Lower max_tokens or the prompt.",
                    state,
                    "tokens",
                    None,
                )
            if state.tokens.level < tokens:
                raise self._refusal(
                    f"Rate limit reached for tokens: {principal.tokens_per_minute} per minute; this "
                    f"request may use {tokens}.",
                    state,
                    "tokens",
                    state.tokens.wait_for(tokens),
                )
            state.tokens.level -= tokens
        if state.requests is not None:
            state.requests.level -= 1
        state.in_flight += 1
        return RateLimitTicket(principal.key_id, tokens), self._headers(state)

    def release(self, ticket: RateLimitTicket, used_tokens: int | None) -> None:
        """The request ended having used `used_tokens`; None: it never ran (refused later for
        credits, or cancelled before dispatch), so it does not count at all."""
        state = self._keys.get(ticket.key_id)
        if state is None:
            return
        now = self._clock()
        state.in_flight = max(0, state.in_flight - 1)
        if state.tokens is not None:
            state.tokens.refill(now)
            unused = ticket.tokens if used_tokens is None else ticket.tokens - used_tokens
            # Usage beyond the estimate (a prompt counted low) is taken too, into the red if need be.
            state.tokens.level = min(state.tokens.capacity, state.tokens.level + unused)
        if used_tokens is None and state.requests is not None:
            state.requests.refill(now)
            state.requests.level = min(state.requests.capacity, state.requests.level + 1)

    def _state(self, principal: Principal, now: float) -> _KeyState:
        state = self._keys.get(principal.key_id)
        if state is None:
            state = self._keys[principal.key_id] = _KeyState()
        state.requests = _bucket(state.requests, principal.requests_per_minute, now)
        state.tokens = _bucket(state.tokens, principal.tokens_per_minute, now)
        return state

    def _refusal(
        self, message: str, state: _KeyState, limit: str, retry_after: float | None
    ) -> RateLimitExceededError:
        metadata = self._headers(state) | {"limit": limit}
        if retry_after is not None:
            metadata["retry_after"] = str(max(1, math.ceil(retry_after)))
        return RateLimitExceededError(message, metadata=metadata)

    @staticmethod
    def _headers(state: _KeyState) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, bucket in (("requests", state.requests), ("tokens", state.tokens)):
            if bucket is None:
                continue
            headers[f"x-ratelimit-limit-{name}"] = str(int(bucket.capacity))
            headers[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(bucket.level)))
            headers[f"x-ratelimit-reset-{name}"] = format_duration(bucket.seconds_until_full())
        return headers


def _bucket(bucket: TokenBucket | None, limit: int | None, now: float) -> TokenBucket | None:
    """The bucket for `limit` as of `now`: made, refilled, resized or dropped to follow the key."""
    if limit is None:
        return None
    if bucket is None:
        return TokenBucket.per_minute(limit, now)
    bucket.refill(now)
    if bucket.capacity != limit:
        bucket.resize(limit)
    return bucket
