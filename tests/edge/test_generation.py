"""Streaming several prompts side by side."""

from __future__ import annotations

import asyncio

import pytest

from services.edge.generation import interleave


async def numbers(name: str, count: int, gate: asyncio.Event | None = None):
    for i in range(count):
        if gate is not None and i == 1:
            await gate.wait()
        yield f"{name}{i}"


async def test_interleave_yields_everything_tagged_with_its_source():
    items = [item async for item in interleave([numbers("a", 3), numbers("b", 2)])]
    assert sorted(items) == [(0, "a0"), (0, "a1"), (0, "a2"), (1, "b0"), (1, "b1")]
    assert [name for _, name in items if name.startswith("a")] == ["a0", "a1", "a2"], "order kept per source"


async def test_a_stalled_source_does_not_hold_back_the_others():
    gate = asyncio.Event()
    stream = interleave([numbers("slow", 2, gate), numbers("fast", 3)])
    seen = [await anext(stream) for _ in range(4)]
    assert sorted(seen) == [(0, "slow0"), (1, "fast0"), (1, "fast1"), (1, "fast2")]
    gate.set()
    assert await anext(stream) == (0, "slow1")
    await stream.aclose()


async def test_a_failing_source_ends_the_interleaving_with_its_error():
    async def failing():
        yield "x"
        raise ValueError("broken")

    with pytest.raises(ValueError, match="broken"):
        async for _ in interleave([failing(), numbers("b", 50)]):
            pass
