"""The exact-match response cache: only deterministic requests, keyed on the normalised request and
the model, per key, bounded in bytes and age, replayed as fresh messages."""

from __future__ import annotations

import pytest

from services.common.errors import InsufficientQuotaError
from services.router.accounting import Prices
from services.router.accounting.response_cache import ResponseCache, cache_key, is_deterministic
from switchyard.inference.v1 import inference_pb2

from .conftest import FakeClock, new_key


def request(text: str = "hi", **sampling) -> inference_pb2.GenerationInput:
    return inference_pb2.GenerationInput(
        prompt=inference_pb2.TextPrompt(text=text), sampling=inference_pb2.SamplingParams(**sampling)
    )


DELTAS = [
    inference_pb2.TokenDelta(index=0, text="Hello", token_ids=[1]),
    inference_pb2.TokenDelta(
        index=0, text=" there", token_ids=[2], finish_reason=inference_pb2.FINISH_REASON_STOP
    ),
]
USAGE = inference_pb2.Usage(prompt_tokens=3, completion_tokens=2)


def test_only_greedy_or_seeded_requests_are_deterministic():
    assert is_deterministic(request(temperature=0.0))
    assert is_deterministic(request(temperature=0.9, seed=7))
    assert not is_deterministic(request())  # unset temperature: the engine's default, 1.0
    assert not is_deterministic(request(temperature=0.7))


def test_the_key_depends_on_everything_the_engine_sees_and_nothing_else():
    a = request(temperature=0.0, logit_bias={5: 1.0, 9: -1.0})
    b = request(temperature=0.0, logit_bias={9: -1.0, 5: 1.0})  # same map, other insertion order
    assert cache_key("key_1", "acme/m", a) == cache_key("key_1", "acme/m", b)
    assert cache_key("key_1", "acme/m", a) != cache_key("key_1", "acme/other", a)
    assert cache_key("key_1", "acme/m", a) != cache_key("key_2", "acme/m", a)
    assert cache_key("key_1", "acme/m", a) != cache_key(
        "key_1", "acme/m", request(temperature=0.0, max_tokens=5)
    )
    # Length-prefixed parts: moving a character between scope and model is another key.
    assert cache_key("ab", "c", a) != cache_key("a", "bc", a)


def test_a_hit_replays_fresh_messages_with_the_prompt_counted_as_cached():
    cache = ResponseCache(max_bytes=10_000, ttl_seconds=60)
    cache.put(b"k", DELTAS, USAGE)
    hit = cache.get(b"k")
    assert hit.deltas == DELTAS
    assert hit.usage.cached_tokens == 3 and hit.usage.completion_tokens == 2
    hit.deltas[0].text = "mutated"
    assert cache.get(b"k").deltas[0].text == "Hello"


def test_entries_expire_after_the_ttl():
    clock = FakeClock()
    cache = ResponseCache(max_bytes=10_000, ttl_seconds=60, clock=clock)
    cache.put(b"k", DELTAS, USAGE)
    clock.advance(59)
    assert cache.get(b"k") is not None
    clock.advance(2)
    assert cache.get(b"k") is None


def test_the_cache_is_bounded_in_bytes_evicting_the_least_recently_used():
    one_entry = ResponseCache(max_bytes=10**6, ttl_seconds=60)
    one_entry.put(b"probe", DELTAS, USAGE)
    size = one_entry._entries.currsize
    cache = ResponseCache(max_bytes=3 * size, ttl_seconds=60)
    for key in (b"a", b"b", b"c"):
        cache.put(key, DELTAS, USAGE)
    cache.get(b"a")  # recently used: kept
    cache.put(b"d", DELTAS, USAGE)
    assert len(cache) == 3
    assert cache.get(b"b") is None
    assert all(cache.get(k) is not None for k in (b"a", b"c", b"d"))
    # An entry larger than the whole cache is not stored (rather than flushing everything).
    cache.put(b"huge", [inference_pb2.TokenDelta(text="x" * (4 * size))], USAGE)
    assert cache.get(b"huge") is None and len(cache) == 3


async def test_the_facade_caches_deterministic_requests_per_key_and_model(accounting):
    _, secret_1 = await new_key(accounting)
    _, secret_2 = await new_key(accounting)
    alice, bob = await accounting.authenticate(secret_1), await accounting.authenticate(secret_2)
    greedy = request(temperature=0.0)

    assert accounting.cache_lookup(alice, "acme/m", greedy) is None
    accounting.cache_store(alice, "acme/m", greedy, DELTAS, USAGE)
    assert accounting.cache_lookup(alice, "acme/m", greedy).deltas == DELTAS
    assert accounting.cache_lookup(bob, "acme/m", greedy) is None
    # Off per request (a header or field at the edge).
    assert accounting.cache_lookup(alice, "acme/m", greedy, use_cache=False) is None

    sampled = request(temperature=0.8)
    accounting.cache_store(alice, "acme/m", sampled, DELTAS, USAGE)
    assert accounting.cache_lookup(alice, "acme/m", sampled) is None


async def test_a_cache_hit_is_free_by_default(accounting):
    _, secret = await new_key(accounting, credits=0)
    principal = await accounting.authenticate(secret)

    async def admit(cached: bool):
        return await accounting.admit(
            principal,
            request_id="r",
            model="acme/m",
            prices=Prices(5.0, 5.0),
            prompt_tokens=3,
            max_completion_tokens=2,
            cached=cached,
        )

    with pytest.raises(InsufficientQuotaError):
        await admit(cached=False)
    admission = await admit(cached=True)
    assert (await accounting.settle(admission, USAGE)).cost_nanocredits == 0
