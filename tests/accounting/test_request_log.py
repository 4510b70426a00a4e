"""The request log: every field kept, written in batches off the request path, flushed on close,
drops counted and reported, and disable_log keeping only the metrics."""

from __future__ import annotations

import asyncio
import logging

import pytest
from google.protobuf import struct_pb2
from prometheus_client import REGISTRY
from sqlalchemy import event, func, select

from services.router.accounting import Accounting, RequestLogEntry, schema
from switchyard.inference.v1 import inference_pb2

from .conftest import new_key


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("switchyard_request_log_dropped_total", {"reason": reason}) or 0.0


def chat(text: str) -> inference_pb2.GenerationInput:
    return inference_pb2.GenerationInput(
        chat=inference_pb2.Chat(messages=[inference_pb2.ChatMessage(role="user", content=text)]),
        sampling=inference_pb2.SamplingParams(temperature=0.0, max_tokens=16),
    )


async def row_count(accounting: Accounting) -> int:
    async with accounting.database.engine.connect() as connection:
        return (await connection.execute(select(func.count()).select_from(schema.request_log))).scalar_one()


async def test_every_field_of_a_request_is_kept(accounting):
    key_id, secret = await new_key(accounting, reveal_model_names=True)
    viewer = await accounting.authenticate(secret)
    metadata = struct_pb2.Struct()
    metadata.update({"team": "search", "attempt": 2})
    accounting.record(
        RequestLogEntry(
            request_id="req-1",
            key_id=key_id,
            customer_identifier="cust-9",
            metadata=metadata,
            model="acme/large:2",
            provider="acme",
            category="code",
            difficulty=0.7,
            preference="powerful",
            prompt_tokens=12,
            completion_tokens=34,
            cached_tokens=8,
            cost_nanocredits=5_000,
            latency=1.5,
            time_to_first_token=0.2,
            routing_time=0.001,
            status_code=200,
            stream=True,
            attempts=2,
            fallbacks_used=["acme/small"],
            cached=False,
            request=chat("write a haiku"),
            completions=["an old silent pond"],
        )
    )
    await accounting.flush_log()
    logged = await accounting.log.get_request(viewer, "req-1")
    assert (logged.customer_identifier, logged.metadata) == ("cust-9", {"team": "search", "attempt": 2})
    assert (logged.model, logged.provider, logged.category, logged.preference) == (
        "acme/large:2",
        "acme",
        "code",
        "powerful",
    )
    assert logged.difficulty == pytest.approx(0.7)
    assert (logged.prompt_tokens, logged.completion_tokens, logged.cached_tokens) == (12, 34, 8)
    assert logged.cost_nanocredits == 5_000
    assert (logged.latency, logged.time_to_first_token, logged.routing_time) == pytest.approx(
        (1.5, 0.2, 0.001)
    )
    assert (logged.status_code, logged.stream, logged.attempts, logged.cached) == (200, True, 2, False)
    assert logged.fallbacks_used == ["acme/small"]
    assert logged.request == chat("write a haiku")
    assert logged.completions == ["an old silent pond"]
    assert not logged.log_disabled


async def test_disable_log_keeps_the_metrics_and_never_the_text(accounting):
    key_id, secret = await new_key(accounting, reveal_model_names=True)
    entry = RequestLogEntry(
        request_id="private",
        key_id=key_id,
        model="acme/large",
        prompt_tokens=5,
        completion_tokens=7,
        cost_nanocredits=99,
        latency=0.5,
        request=chat("my medical history"),
        completions=["a diagnosis"],
        log_disabled=True,
    )
    accounting.record(entry)
    # Not even the queue holds the text.
    assert entry.request is None and not entry.completions
    await accounting.flush_log()

    logged = await accounting.log.get_request(await accounting.authenticate(secret), "private")
    assert logged.log_disabled
    assert logged.request is None and logged.completions is None
    assert (logged.model, logged.prompt_tokens, logged.completion_tokens, logged.cost_nanocredits) == (
        "acme/large",
        5,
        7,
        99,
    )
    async with accounting.database.engine.connect() as connection:
        raw = (await connection.execute(select(schema.request_log))).mappings().one()
    assert "medical" not in repr(dict(raw)) and "diagnosis" not in repr(dict(raw))


async def test_entries_are_written_in_batches(make_accounting):
    accounting = await make_accounting(log_batch_size=5, log_max_linger_seconds=3600)
    key_id, _ = await new_key(accounting)
    commits = []
    event.listen(accounting.database.write_engine, "commit", commits.append)
    for i in range(12):
        accounting.record(RequestLogEntry(request_id=f"r{i}", key_id=key_id))
    await accounting.flush_log()
    assert await row_count(accounting) == 12
    assert len(commits) == 3  # 5 + 5 + 2


async def test_a_partial_batch_is_written_after_the_linger_time_without_a_flush(make_accounting):
    accounting = await make_accounting(log_batch_size=100, log_max_linger_seconds=0.05)
    key_id, _ = await new_key(accounting)
    accounting.record(RequestLogEntry(request_id="lonely", key_id=key_id))
    # Waits for the writer to finish the entry, without asking it to hurry as flush_log() would.
    await asyncio.wait_for(accounting._log_writer._queue.join(), timeout=30)
    assert await row_count(accounting) == 1


async def test_close_writes_everything_that_was_queued(settings, clock):
    settings = settings.model_copy(update={"log_max_linger_seconds": 3600})
    accounting = Accounting(settings, clock=clock)
    await accounting.start()
    key_id, _ = await new_key(accounting)
    for i in range(3):
        accounting.record(RequestLogEntry(request_id=f"r{i}", key_id=key_id))
    await accounting.close()

    reopened = Accounting(settings, clock=clock)
    await reopened.start()
    try:
        assert await row_count(reopened) == 3
    finally:
        await reopened.close()


async def test_a_full_queue_drops_entries_counted_and_reported(make_accounting, caplog):
    accounting = await make_accounting(log_queue_size=2, log_max_linger_seconds=3600)
    key_id, _ = await new_key(accounting)
    before = dropped("queue_full")
    with caplog.at_level(logging.WARNING, logger="services.router.accounting.request_log"):
        for i in range(5):
            accounting.record(RequestLogEntry(request_id=f"r{i}", key_id=key_id))  # never raises, never waits
    assert dropped("queue_full") - before == 3
    assert any("dropped" in r.getMessage() for r in caplog.records)
    await accounting.flush_log()
    assert await row_count(accounting) == 2


async def test_a_batch_the_database_refuses_is_counted_and_the_writer_carries_on(accounting):
    key_id, _ = await new_key(accounting)
    before = dropped("write_failed")
    accounting.record(RequestLogEntry(request_id="orphan", key_id="key_that_does_not_exist"))
    await accounting.flush_log()
    assert dropped("write_failed") - before == 1
    accounting.record(RequestLogEntry(request_id="fine", key_id=key_id))
    await accounting.flush_log()
    assert await row_count(accounting) == 1


async def test_entries_recorded_after_close_are_counted(settings, clock):
    accounting = Accounting(settings, clock=clock)
    await accounting.start()
    await accounting.close()
    before = dropped("closed")
    accounting.record(RequestLogEntry(request_id="late", key_id="k"))
    assert dropped("closed") - before == 1
