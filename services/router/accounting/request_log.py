"""The request log: one row per request, written in batches off the request path.

`record()` only appends to a bounded queue (no await, no I/O), so a request never waits for the
database. A writer task takes entries in batches of up to `batch_size`, waiting at most
`max_linger` for a batch to fill, so a busy router writes a few large transactions instead of many
small ones that would compete with credit reservations for the database. When the queue is full
the entry is dropped: the request still completes, and the drop is counted
(switchyard_request_log_dropped_total{reason="queue_full"}, exposed on the router's metrics port,
SWITCHYARD_ROUTER_METRICS_PORT) and logged, never silent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf import json_format, struct_pb2
from prometheus_client import Counter

from services.router.accounting import schema
from services.router.accounting.database import Database
from switchyard.inference.v1 import inference_pb2

logger = logging.getLogger(__name__)

LOG_ENTRIES_DROPPED = Counter(
    "switchyard_request_log_dropped",
    "Request log entries not written: queue_full (the writer fell behind), write_failed (the "
    "database refused the batch), closed (recorded after shutdown began).",
    ["reason"],
)
LOG_ENTRIES_WRITTEN = Counter("switchyard_request_log_written", "Request log entries written.")
# A drop is logged at once, then at most this often with the count since the last line.
_DROP_LOG_INTERVAL = 10.0


@dataclass(slots=True)
class RequestLogEntry:
    """What the router knows about a request when it ends. `request` is referenced, not copied:
    do not modify it after `record()`."""

    request_id: str
    key_id: str
    status_code: int = 200
    # The ErrorInfo reason of a failed request ("RATE_LIMIT_EXCEEDED").
    error_reason: str = ""
    customer_identifier: str = ""
    metadata: struct_pb2.Struct | Mapping[str, object] | None = None
    model: str = ""
    provider: str = ""
    category: str = ""
    difficulty: float | None = None
    preference: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_nanocredits: int = 0
    # Seconds.
    latency: float | None = None
    time_to_first_token: float | None = None
    routing_time: float | None = None
    stream: bool = False
    attempts: int = 1
    fallbacks_used: Sequence[str] = ()
    cached: bool = False
    # The prompt or chat and the sampling, and each choice's text; dropped when log_disabled.
    request: inference_pb2.GenerationInput | None = None
    completions: Sequence[str] = ()
    # The request's disable_log: keep only its metrics.
    log_disabled: bool = False
    created: float = field(default_factory=time.time)


def _row(entry: RequestLogEntry) -> dict[str, object]:
    created_at = datetime.fromtimestamp(entry.created, UTC)
    metadata = entry.metadata
    if isinstance(metadata, struct_pb2.Struct):
        metadata = json_format.MessageToDict(metadata)
    keep_text = not entry.log_disabled
    return {
        "request_id": entry.request_id,
        "key_id": entry.key_id,
        "created_at": created_at,
        "day": created_at.date(),
        "customer_identifier": entry.customer_identifier,
        "request_metadata": dict(metadata) if metadata else None,
        "model": entry.model,
        "provider": entry.provider,
        "category": entry.category,
        "difficulty": entry.difficulty,
        "preference": entry.preference,
        "prompt_tokens": entry.prompt_tokens,
        "completion_tokens": entry.completion_tokens,
        "cached_tokens": entry.cached_tokens,
        "cost_nanocredits": entry.cost_nanocredits,
        "latency": entry.latency,
        "time_to_first_token": entry.time_to_first_token,
        "routing_time": entry.routing_time,
        "status_code": entry.status_code,
        "error_reason": entry.error_reason,
        "stream": entry.stream,
        "attempts": entry.attempts,
        "fallbacks_used": list(entry.fallbacks_used),
        "cached": entry.cached,
        "request_proto": entry.request.SerializeToString()
        if keep_text and entry.request is not None
        else None,
        "completions": list(entry.completions) if keep_text else None,
        "log_disabled": entry.log_disabled,
    }


class RequestLogWriter:
    def __init__(self, database: Database, *, queue_size: int, batch_size: int, max_linger: float) -> None:
        self._database = database
        self._queue: asyncio.Queue[RequestLogEntry] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._max_linger = max_linger
        # Set when waiting for a batch to fill is pointless: it is full, or someone is flushing.
        self._wakeup = asyncio.Event()
        self._flushing = 0
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._drops_unreported = 0
        self._last_drop_report = float("-inf")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="request-log-writer")

    def record(self, entry: RequestLogEntry) -> bool:
        """Queues the entry; False when it was dropped (counted and logged)."""
        if entry.log_disabled:
            # Never hold the text, not even in the queue.
            entry.request, entry.completions = None, ()
        if self._closed:
            self._dropped("closed")
            return False
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self._dropped("queue_full")
            return False
        if self._queue.qsize() >= self._batch_size:
            self._wakeup.set()
        return True

    async def flush(self) -> None:
        """Returns once every entry recorded before the call is written (or counted as dropped)."""
        if self._task is None:
            raise RuntimeError("the request log writer is not running")
        self._flushing += 1
        self._wakeup.set()
        try:
            await self._queue.join()
        finally:
            self._flushing -= 1

    async def close(self) -> None:
        """Writes what is queued, then stops the writer; later entries are dropped (reason closed)."""
        self._closed = True
        if self._task is None:
            return
        await self.flush()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        self._report_drops(force=True)

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _next_batch(self) -> list[RequestLogEntry]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self._max_linger
        while len(batch) < self._batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if self._flushing or self._closed or remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        return batch

    async def _write(self, batch: list[RequestLogEntry]) -> None:
        try:
            # On SQLite this runs on the writer thread, rows built there too: off the event loop.
            await self._database.write(
                lambda connection: connection.execute(schema.request_log.insert(), [_row(e) for e in batch])
            )
        except Exception:
            # The database is down or refused a row: these entries are lost, loudly; the writer
            # carries on with the next batch.
            logger.exception("request log: could not write %d entries; they are dropped", len(batch))
            LOG_ENTRIES_DROPPED.labels("write_failed").inc(len(batch))
            return
        LOG_ENTRIES_WRITTEN.inc(len(batch))

    def _dropped(self, reason: str) -> None:
        LOG_ENTRIES_DROPPED.labels(reason).inc()
        self._drops_unreported += 1
        self._report_drops(force=False)

    def _report_drops(self, *, force: bool) -> None:
        now = time.monotonic()
        if not self._drops_unreported or (not force and now - self._last_drop_report < _DROP_LOG_INTERVAL):
            return
        logger.warning(
            "request log: dropped %d entries (queue of %d full or writer closed); the requests themselves "
            "completed. See switchyard_request_log_dropped_total on the router's metrics port.",
            self._drops_unreported,
            self._queue.maxsize,
        )
        self._drops_unreported = 0
        self._last_drop_report = now
