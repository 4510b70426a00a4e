"""Reading the request log back: usage totals and the paginated request listing.

Scope: a key sees its own requests; an admin key sees every key's (or one key's, when asked).
Redaction: for a key that may not see model names, models read "redacted" and providers are
empty, exactly as in its generation responses; usage buckets that differ only by model merge.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

import orjson
from sqlalchemy import ColumnElement, and_, func, or_, select

from services.common.errors import InvalidRequestError, PermissionDeniedError
from services.router.accounting import schema
from services.router.accounting.database import Database
from services.router.accounting.errors import NotFoundError
from services.router.accounting.keys import Principal
from services.router.redaction import REDACTED
from switchyard.inference.v1 import inference_pb2

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

_log = schema.request_log


@dataclass(frozen=True, slots=True)
class UsageBucket:
    day: date | None
    model: str
    customer_identifier: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_nanocredits: int = 0
    cached_responses: int = 0

    def plus(self, other: UsageBucket) -> UsageBucket:
        return UsageBucket(
            self.day,
            self.model,
            self.customer_identifier,
            self.requests + other.requests,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.cost_nanocredits + other.cost_nanocredits,
            self.cached_responses + other.cached_responses,
        )


@dataclass(frozen=True, slots=True)
class UsageReport:
    buckets: list[UsageBucket]
    total: UsageBucket


@dataclass(frozen=True, slots=True)
class RequestFilter:
    """All optional; times are a half-open range [start, end)."""

    start: datetime | None = None
    end: datetime | None = None
    customer_identifier: str | None = None
    model: str | None = None
    status_code: int | None = None
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One request log row, redacted for whoever reads it."""

    request_id: str
    key_id: str
    created_at: datetime
    customer_identifier: str
    metadata: dict[str, object] | None
    model: str
    provider: str
    category: str
    difficulty: float | None
    preference: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_nanocredits: int
    latency: float | None
    time_to_first_token: float | None
    routing_time: float | None
    status_code: int
    error_reason: str
    stream: bool
    attempts: int
    fallbacks_used: list[str]
    cached: bool
    # None when the request set disable_log.
    request: inference_pb2.GenerationInput | None
    completions: list[str] | None
    log_disabled: bool


def _key_scope(viewer: Principal, key_id: str | None) -> str | None:
    """The key whose rows the viewer reads; None: every key (admins only)."""
    if viewer.admin:
        return key_id or None
    if key_id and key_id != viewer.key_id:
        raise PermissionDeniedError("Only admin keys can read other keys' usage and requests.")
    return viewer.key_id


def _time_range(start: datetime | None, end: datetime | None) -> list[ColumnElement[bool]]:
    conditions = []
    if start is not None:
        conditions.append(_log.c.created_at >= start)
    if end is not None:
        conditions.append(_log.c.created_at < end)
    return conditions


def _encode_page_token(created_at: datetime, row_id: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([created_at.isoformat(), row_id])).decode()


def _decode_page_token(token: str) -> tuple[datetime, int]:
    try:
        created_at, row_id = orjson.loads(base64.urlsafe_b64decode(token.encode()))
        return datetime.fromisoformat(created_at).astimezone(UTC), int(row_id)
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError) as error:
        raise InvalidRequestError(
            "The page_token is not one this API returned.", param="page_token"
        ) from error


class RequestLogReader:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def usage(
        self,
        viewer: Principal,
        *,
        key_id: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> UsageReport:
        """Totals per (day, model, customer_identifier), ordered by day, model, customer."""
        conditions = _time_range(start, end)
        scope = _key_scope(viewer, key_id)
        if scope is not None:
            conditions.append(_log.c.key_id == scope)
        group = (_log.c.day, _log.c.model, _log.c.customer_identifier)
        query = (
            select(
                *group,
                func.count(),
                func.sum(_log.c.prompt_tokens),
                func.sum(_log.c.completion_tokens),
                func.sum(_log.c.cached_tokens),
                func.sum(_log.c.cost_nanocredits),
                func.count().filter(_log.c.cached.is_(True)),
            )
            .where(*conditions)
            .group_by(*group)
        )
        async with self._database.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        merged: dict[tuple[date, str, str], UsageBucket] = {}
        for day, model, customer, *sums in rows:
            bucket = UsageBucket(day, self._model(viewer, model), customer, *(int(s or 0) for s in sums))
            key = (bucket.day, bucket.model, bucket.customer_identifier)
            merged[key] = merged[key].plus(bucket) if key in merged else bucket
        buckets = [merged[key] for key in sorted(merged)]
        total = UsageBucket(None, "", "")
        for bucket in buckets:
            total = total.plus(bucket)
        return UsageReport(buckets, total)

    async def list_requests(
        self, viewer: Principal, filters: RequestFilter, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[LoggedRequest], str]:
        """Newest first; returns the page and the token for the next one ("" on the last)."""
        page_size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        conditions = _time_range(filters.start, filters.end)
        scope = _key_scope(viewer, filters.key_id)
        if scope is not None:
            conditions.append(_log.c.key_id == scope)
        if filters.customer_identifier:
            conditions.append(_log.c.customer_identifier == filters.customer_identifier)
        if filters.model:
            if not viewer.reveal_model_names:
                raise InvalidRequestError(
                    "This key cannot see model names, so it cannot filter by model.", param="model"
                )
            conditions.append(_log.c.model == filters.model)
        if filters.status_code is not None:
            conditions.append(_log.c.status_code == filters.status_code)
        if page_token:
            created_at, row_id = _decode_page_token(page_token)
            conditions.append(
                or_(_log.c.created_at < created_at, and_(_log.c.created_at == created_at, _log.c.id < row_id))
            )
        query = (
            select(_log)
            .where(*conditions)
            .order_by(_log.c.created_at.desc(), _log.c.id.desc())
            .limit(page_size + 1)
        )
        async with self._database.engine.connect() as connection:
            rows = (await connection.execute(query)).mappings().all()
        page = rows[:page_size]
        next_token = (
            _encode_page_token(page[-1]["created_at"], page[-1]["id"]) if len(rows) > page_size else ""
        )
        return [self._logged(viewer, row) for row in page], next_token

    async def get_request(self, viewer: Principal, request_id: str) -> LoggedRequest:
        """The newest row with this request id that the viewer may see."""
        conditions = [_log.c.request_id == request_id]
        if not viewer.admin:
            conditions.append(_log.c.key_id == viewer.key_id)
        query = select(_log).where(*conditions).order_by(_log.c.created_at.desc(), _log.c.id.desc()).limit(1)
        async with self._database.engine.connect() as connection:
            row = (await connection.execute(query)).mappings().first()
        if row is None:
            raise NotFoundError(f"No request with id '{request_id}'.")
        return self._logged(viewer, row)

    @staticmethod
    def _model(viewer: Principal, model: str) -> str:
        return model if viewer.reveal_model_names or not model else REDACTED

    def _logged(self, viewer: Principal, row) -> LoggedRequest:
        reveal = viewer.reveal_model_names
        proto = row["request_proto"]
        fallbacks: Sequence[str] = row["fallbacks_used"]
        return LoggedRequest(
            request_id=row["request_id"],
            key_id=row["key_id"],
            created_at=row["created_at"],
            customer_identifier=row["customer_identifier"],
            metadata=row["request_metadata"],
            model=self._model(viewer, row["model"]),
            provider=row["provider"] if reveal else "",
            category=row["category"],
            difficulty=row["difficulty"],
            preference=row["preference"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            cached_tokens=row["cached_tokens"],
            cost_nanocredits=row["cost_nanocredits"],
            latency=row["latency"],
            time_to_first_token=row["time_to_first_token"],
            routing_time=row["routing_time"],
            status_code=row["status_code"],
            error_reason=row["error_reason"],
            stream=row["stream"],
            attempts=row["attempts"],
            fallbacks_used=[self._model(viewer, m) for m in fallbacks],
            cached=row["cached"],
            request=None if proto is None else inference_pb2.GenerationInput.FromString(proto),
            completions=row["completions"],
            log_disabled=row["log_disabled"],
        )
