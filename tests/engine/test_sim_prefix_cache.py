"""The prefix-cache model and its hit-rate statistic."""

from __future__ import annotations

from services.engine.backends.sim.prefix_cache import HitRateWindow, PrefixCache


def test_only_full_blocks_of_a_seen_prefix_hit():
    cache = PrefixCache(block_size=4, capacity_blocks=100)
    prompt = list(range(10))  # two full blocks and a partial one
    assert cache.match(prompt) == 0
    cache.insert(prompt)
    assert cache.match(prompt) == 8
    assert cache.match([*prompt[:8], 99, 98, 97, 96]) == 8, "the shared prefix hits"
    assert cache.match([99, *prompt[1:]]) == 0, "a block hits only after the same prefix"


def test_a_fully_cached_prompt_still_computes_its_last_block():
    cache = PrefixCache(block_size=4, capacity_blocks=100)
    cache.insert(list(range(8)))
    assert cache.match(list(range(8))) == 4


def test_least_recently_used_blocks_are_evicted_beyond_capacity():
    cache = PrefixCache(block_size=2, capacity_blocks=4)
    old, new = [1, 2, 3, 4], [5, 6, 7, 8]
    cache.insert([*old, 0])
    cache.insert([*new, 0])
    assert len(cache) == 4
    cache.match([*old, 0])  # refreshes old's blocks
    cache.insert([9, 9, 9, 9, 0])
    assert cache.match([*old, 0]) == 4
    assert cache.match([*new, 0]) == 0


def test_capacity_zero_turns_caching_off():
    cache = PrefixCache(block_size=2, capacity_blocks=0)
    cache.insert([1, 2, 3, 4])
    assert cache.match([1, 2, 3, 4, 5]) == 0


def test_hit_rate_covers_the_most_recent_requests_only():
    window = HitRateWindow(requests=2)
    window.record(100, 0)
    assert window.rate == 0.0
    window.record(100, 50)
    assert window.rate == 0.25
    window.record(100, 100)  # the first request drops out
    assert window.rate == 0.75
