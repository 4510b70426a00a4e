"""Admission under the running-sequence cap: counts, order, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from services.engine.backends.sim.admission import AdmissionQueue


async def until(condition: Callable[[], bool]) -> None:
    """Lets the other tasks run until `condition` holds (a bounded number of scheduler turns)."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def hold(queue: AdmissionQueue, sequences: int, admitted: list[int], release: asyncio.Event) -> None:
    async with queue.admit(sequences):
        admitted.append(sequences)
        await release.wait()


async def test_requests_that_fit_run_and_the_rest_wait_in_order():
    queue = AdmissionQueue(max_running_sequences=4)
    admitted: list[int] = []
    releases = [asyncio.Event() for _ in range(3)]
    tasks = [
        asyncio.create_task(hold(queue, size, admitted, release))
        for size, release in zip((3, 2, 1), releases, strict=True)
    ]
    await until(lambda: queue.waiting_requests == 2)
    assert (queue.running_requests, queue.running_sequences, admitted) == (1, 3, [3])
    # The 1-sequence request would fit, but it does not overtake the 2-sequence one ahead of it.
    releases[0].set()
    await until(lambda: admitted == [3, 2, 1])
    assert (queue.running_requests, queue.running_sequences, queue.waiting_requests) == (2, 3, 0)
    for release in releases:
        release.set()
    await asyncio.gather(*tasks)
    assert (queue.running_requests, queue.running_sequences) == (0, 0)


async def test_a_request_larger_than_the_cap_runs_alone():
    queue = AdmissionQueue(max_running_sequences=2)
    admitted: list[int] = []
    release = asyncio.Event()
    task = asyncio.create_task(hold(queue, 5, admitted, release))
    await until(lambda: admitted == [5])
    release.set()
    await task


async def test_a_cancelled_waiter_leaves_the_line_and_the_next_one_moves_up():
    queue = AdmissionQueue(max_running_sequences=1)
    admitted: list[int] = []
    first_release, third_release = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(hold(queue, 1, admitted, first_release))
    await until(lambda: admitted == [1])
    second = asyncio.create_task(hold(queue, 1, admitted, asyncio.Event()))
    third = asyncio.create_task(hold(queue, 1, admitted, third_release))
    await until(lambda: queue.waiting_requests == 2)
    second.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await second
    assert queue.waiting_requests == 1
    first_release.set()
    await until(lambda: admitted == [1, 1])
    third_release.set()
    await asyncio.gather(first, third)
    assert (queue.running_requests, queue.waiting_requests) == (0, 0)
