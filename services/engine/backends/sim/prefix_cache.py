"""A model of vLLM's automatic prefix caching, for routing experiments.

Tokens are cut into full blocks of `block_size`; a block is known by a hash of its tokens and of every
block before it, so a block hit means the whole prefix up to it is cached. The cache is an LRU of up to
`capacity_blocks` block hashes. Only what it takes to tell how many prompt tokens a request finds
cached: no memory is held.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence


class PrefixCache:
    def __init__(self, block_size: int, capacity_blocks: int) -> None:
        self.block_size = block_size
        self.capacity_blocks = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def block_hashes(self, token_ids: Sequence[int]) -> list[int]:
        """The chained hash of every full block."""
        hashes, parent, size = [], 0, self.block_size
        for start in range(0, len(token_ids) - size + 1, size):
            parent = hash((parent, tuple(token_ids[start : start + size])))
            hashes.append(parent)
        return hashes

    def match(self, token_ids: Sequence[int]) -> int:
        """How many leading tokens are cached (refreshing those blocks). As in vLLM, a fully cached
        prompt still computes its last block: the model needs the last token's logits."""
        if not self.capacity_blocks:
            return 0
        hits = 0
        for block in self.block_hashes(token_ids):
            if block not in self._blocks:
                break
            self._blocks.move_to_end(block)
            hits += 1
        cached = hits * self.block_size
        return cached - self.block_size if cached and cached == len(token_ids) else cached

    def insert(self, token_ids: Sequence[int]) -> None:
        """Caches every full block of `token_ids`, evicting the least recently used beyond capacity."""
        if not self.capacity_blocks:
            return
        for block in self.block_hashes(token_ids):
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)


class HitRateWindow:
    """The share of prompt tokens found cached over the most recent requests (vLLM keeps the same
    statistic over its last 1000 requests)."""

    def __init__(self, requests: int = 1000) -> None:
        self._recent: deque[tuple[int, int]] = deque(maxlen=requests)
        self._queried = 0
        self._hit = 0

    def record(self, queried: int, hit: int) -> None:
        if len(self._recent) == self._recent.maxlen:
            old_queried, old_hit = self._recent[0]
            self._queried -= old_queried
            self._hit -= old_hit
        self._recent.append((queried, hit))
        self._queried += queried
        self._hit += hit

    @property
    def rate(self) -> float:
        return self._hit / self._queried if self._queried else 0.0
