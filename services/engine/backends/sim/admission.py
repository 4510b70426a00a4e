"""Admission of requests under a cap on running sequences, first come first served.

A request needs one slot per sequence it generates (n, or best_of). It runs when its sequences fit,
or alone when it is bigger than the whole cap; otherwise it waits in line, and nobody overtakes it
(a large request is not starved by small ones). The counts are what the engine's load report shows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class AdmissionQueue:
    def __init__(self, max_running_sequences: int) -> None:
        self.max_running_sequences = max_running_sequences
        self.running_requests = 0
        self.running_sequences = 0
        self._waiting: deque[tuple[asyncio.Future[None], int]] = deque()

    @property
    def waiting_requests(self) -> int:
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def admit(self, sequences: int) -> AsyncIterator[None]:
        """Holds `sequences` slots for the body of the `async with`; waits for them first if needed."""
        if self._waiting or not self._fits(sequences):
            granted = asyncio.get_running_loop().create_future()
            entry = (granted, sequences)
            self._waiting.append(entry)
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release(sequences)  # granted just as the caller gave up
                else:
                    self._waiting.remove(entry)
                    self._grant_waiting()  # the next in line may fit now
                raise
        else:
            self._take(sequences)
        try:
            yield
        finally:
            self._release(sequences)

    def _fits(self, sequences: int) -> bool:
        return self.running_requests == 0 or self.running_sequences + sequences <= self.max_running_sequences

    def _take(self, sequences: int) -> None:
        self.running_requests += 1
        self.running_sequences += sequences

    def _release(self, sequences: int) -> None:
        self.running_requests -= 1
        self.running_sequences -= sequences
        self._grant_waiting()

    def _grant_waiting(self) -> None:
        while self._waiting and self._fits(self._waiting[0][1]):
            granted, sequences = self._waiting.popleft()
            self._take(sequences)
            granted.set_result(None)
