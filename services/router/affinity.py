"""Prefix and session affinity: remember which replica served what, in bounded tables.

An engine's prefix cache holds the KV blocks of prompts it has prefilled; a later request whose
prompt starts the same way (the next turn of a conversation, the same long system prompt) prefills
only what is new if it lands on that replica. The router cannot see tokens, so it approximates the
engine's blocks with fixed-size blocks of the prompt's text (or token ids), each hashed together with
everything before it, the way vLLM chains its block hashes: equal hashes mean equal prefixes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def prefix_block_hashes(namespace: str, source: str | bytes, block_size: int, max_blocks: int) -> list[int]:
    """Chained hashes of the full leading blocks of `source` (a partial last block is left out: the
    engine cannot cache it either). `namespace` (the served model) keeps models apart."""
    hashes = []
    chained = hash(namespace)
    end = min(len(source) // block_size, max_blocks) * block_size
    for start in range(0, end, block_size):
        chained = hash((chained, source[start : start + block_size]))
        hashes.append(chained)
    return hashes


class BoundedTable(Generic[K, V]):
    """A mapping that forgets its least recently written keys beyond `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        return self._entries.get(key)

    def put(self, key: K, value: V) -> None:
        entries = self._entries
        entries[key] = value
        entries.move_to_end(key)
        if len(entries) > self.capacity:
            entries.popitem(last=False)

    def discard_value(self, value: V) -> None:
        """Forgets every key pointing at `value` (a replica removed from the registry)."""
        for key in [key for key, current in self._entries.items() if current == value]:
            del self._entries[key]


class PrefixAffinity:
    """Block hash -> the replica that last served a prompt containing that prefix."""

    def __init__(self, capacity: int) -> None:
        self._table: BoundedTable[int, str] = BoundedTable(capacity)

    def longest_match(self, hashes: list[int], usable: set[str]) -> tuple[str | None, int]:
        """The usable replica holding the longest known prefix, and that prefix's length in blocks.
        Searched from the longest prefix down: the next turn of a conversation matches near its end."""
        for position in range(len(hashes) - 1, -1, -1):
            address = self._table.get(hashes[position])
            if address is not None and address in usable:
                return address, position + 1
        return None, 0

    def record(self, hashes: list[int], address: str) -> None:
        for block_hash in hashes:
            self._table.put(block_hash, address)

    def forget(self, address: str) -> None:
        self._table.discard_value(address)

    def __len__(self) -> int:
        return len(self._table)
