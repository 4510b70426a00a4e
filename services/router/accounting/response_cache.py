"""Exact-match cache of deterministic responses, in this router's memory.

Only requests that would generate the same output again are cached: temperature 0 (greedy) or a
fixed seed. The key is the model plus the GenerationInput serialized deterministically (map fields
in key order), so two requests share an entry exactly when the engine would see the same thing.
Entries are scoped to the API key: a shared entry would tell one customer, by its speed, what
another had asked.

An entry is the complete event sequence (every delta, then the usage), kept serialized: a hit is
replayed as a stream or assembled into one response by the same code that handles a live engine,
and nobody can mutate what the cache holds. Bounded by total bytes and by age (TTL).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cachetools import TTLCache

from switchyard.inference.v1 import inference_pb2


def is_deterministic(generation: inference_pb2.GenerationInput) -> bool:
    sampling = generation.sampling
    greedy = sampling.HasField("temperature") and sampling.temperature == 0.0
    return greedy or sampling.HasField("seed")


def cache_key(scope: str, model: str, generation: inference_pb2.GenerationInput) -> bytes:
    digest = hashlib.sha256()
    for part in (scope.encode(), model.encode()):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    digest.update(generation.SerializeToString(deterministic=True))
    return digest.digest()


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A replayable response: fresh message objects on every hit."""

    deltas: list[inference_pb2.TokenDelta]
    # With cached_tokens = prompt_tokens: nothing was computed for this request.
    usage: inference_pb2.Usage


@dataclass(frozen=True, slots=True)
class _Entry:
    deltas: tuple[bytes, ...]
    usage: bytes

    @property
    def size(self) -> int:
        # Bytes held plus a rough per-object overhead, so that many tiny entries are bounded too.
        return sum(map(len, self.deltas)) + len(self.usage) + 64 * (len(self.deltas) + 2)


class ResponseCache:
    def __init__(
        self, *, max_bytes: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._entries: TTLCache[bytes, _Entry] = TTLCache(
            maxsize=max_bytes, ttl=ttl_seconds, timer=clock, getsizeof=lambda entry: entry.size
        )

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> CachedResponse | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        usage = inference_pb2.Usage.FromString(entry.usage)
        usage.cached_tokens = usage.prompt_tokens
        return CachedResponse([inference_pb2.TokenDelta.FromString(d) for d in entry.deltas], usage)

    def put(self, key: bytes, deltas: Iterable[inference_pb2.TokenDelta], usage: inference_pb2.Usage) -> None:
        entry = _Entry(tuple(d.SerializeToString() for d in deltas), usage.SerializeToString())
        if entry.size > self._entries.maxsize:
            return  # larger than the whole cache: not worth evicting everything for
        self._entries[key] = entry
