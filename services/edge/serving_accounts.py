"""GET /v1/usage, GET /v1/requests and GET /v1/requests/{id}: what the router recorded for the
caller's key (an admin key: for every key), read through AccountsService and answered as JSON.

Query parameters:
- both: `start_time`, `end_time` (a half-open range; Unix seconds, or ISO 8601: "2025-01-31" is that
  day's UTC midnight, "2025-01-31T12:00:00+02:00" an instant, without an offset UTC) and `key_id`
  (admin keys only);
- /v1/requests also: `limit` (1-100, default 20), `page_token` (a previous page's
  `next_page_token`, with the other parameters unchanged), `customer_identifier`, `model` (keys
  that see model names only) and `status` (the HTTP status a request ended with).

Model names are "redacted" for keys that may not see them, as in generation responses.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from google.protobuf import json_format, timestamp_pb2
from starlette.responses import Response

from services.edge.context import RequestContext
from services.edge.errors import ApiError
from services.edge.router_client import RouterClient
from services.edge.serving import json_response
from switchyard.router.v1 import accounts_service_pb2 as accounts_pb2

MAX_PAGE_SIZE = 100
_STATUS_RANGE = range(100, 600)


def parse_time(param: str, value: str) -> timestamp_pb2.Timestamp:
    """Unix seconds or ISO 8601 (see the module docstring) as a Timestamp; 400 naming `param`."""
    try:
        moment = datetime.fromtimestamp(float(value), UTC)
    except (ValueError, OverflowError, OSError):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ApiError(
                400,
                f"Invalid value for '{param}': expected Unix seconds or an ISO 8601 date or time.",
                param=param,
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _integer(query: Mapping[str, str], param: str, allowed: range) -> int | None:
    value = query.get(param)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number not in allowed:
        raise ApiError(
            400,
            f"Invalid value for '{param}': expected a whole number from {allowed.start} to "
            f"{allowed.stop - 1}.",
            param=param,
        )
    return number


def _time_range(
    query: Mapping[str, str], message: accounts_pb2.GetUsageRequest | accounts_pb2.ListRequestsRequest
) -> None:
    for param in ("start_time", "end_time"):
        if param in query:
            getattr(message, param).CopyFrom(parse_time(param, query[param]))


def usage_request(query: Mapping[str, str]) -> accounts_pb2.GetUsageRequest:
    message = accounts_pb2.GetUsageRequest(key_id=query.get("key_id", ""))
    _time_range(query, message)
    return message


def list_requests_request(query: Mapping[str, str]) -> accounts_pb2.ListRequestsRequest:
    message = accounts_pb2.ListRequestsRequest(
        page_size=_integer(query, "limit", range(1, MAX_PAGE_SIZE + 1)) or 0,
        page_token=query.get("page_token", ""),
        customer_identifier=query.get("customer_identifier", ""),
        model=query.get("model", ""),
        key_id=query.get("key_id", ""),
    )
    status = _integer(query, "status", _STATUS_RANGE)
    if status is not None:
        message.status_code = status
    _time_range(query, message)
    return message


def _usage_counts(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def bucket_object(bucket: accounts_pb2.UsageBucket) -> dict[str, Any]:
    return {
        "day": bucket.day or None,
        "model": bucket.model or None,
        "customer_identifier": bucket.customer_identifier or None,
        "requests": bucket.requests,
        "cached_responses": bucket.cached_responses,
        **_usage_counts(bucket.prompt_tokens, bucket.completion_tokens, bucket.cached_tokens),
        "cost": bucket.cost,
    }


def usage_object(response: accounts_pb2.GetUsageResponse) -> dict[str, Any]:
    total = bucket_object(response.total)
    for per_bucket in ("day", "model", "customer_identifier"):
        del total[per_bucket]
    return {
        "object": "usage",
        "data": [bucket_object(bucket) for bucket in response.buckets],
        "total": total,
        "balance": response.balance,
    }


def request_object(record: accounts_pb2.RequestRecord) -> dict[str, Any]:
    return {
        "id": record.request_id,
        "object": "request",
        "created": record.create_time.seconds,
        "key_id": record.key_id,
        "status_code": record.status_code,
        # The ErrorInfo reason, lower-cased as in error objects' `code`.
        "error": record.error_reason.lower() or None,
        "customer_identifier": record.customer_identifier or None,
        "metadata": json_format.MessageToDict(record.metadata) if record.HasField("metadata") else None,
        "model": record.model or None,
        "provider": record.provider or None,
        "category": record.category or None,
        "difficulty": record.difficulty,
        "preference": record.preference or None,
        "usage": _usage_counts(record.prompt_tokens, record.completion_tokens, record.cached_tokens),
        "cost": record.cost,
        "latency": record.latency,
        "time_to_first_token": record.time_to_first_token,
        "routing_time": record.routing_time,
        "stream": record.stream,
        "attempts": record.attempts,
        "fallbacks_used": list(record.fallbacks_used),
        "cached": record.cached,
        "log_disabled": record.log_disabled,
        # What was asked and answered; null when the request set disable_log.
        "request": orjson.loads(record.request_json) if record.request_json else None,
        "completions": None if record.log_disabled else list(record.completions),
    }


class AccountsServing:
    def __init__(self, router: RouterClient, *, grpc_timeout: float) -> None:
        self._router = router
        self._timeout = grpc_timeout

    def _grpc_timeout(self, ctx: RequestContext) -> float:
        return min(self._timeout, ctx.timeout)

    async def usage(self, query: Mapping[str, str], ctx: RequestContext) -> Response:
        response = await self._router.get_usage(
            usage_request(query), metadata=ctx.metadata(), grpc_timeout=self._grpc_timeout(ctx)
        )
        return json_response(usage_object(response))

    async def list_requests(self, query: Mapping[str, str], ctx: RequestContext) -> Response:
        response = await self._router.list_requests(
            list_requests_request(query), metadata=ctx.metadata(), grpc_timeout=self._grpc_timeout(ctx)
        )
        return json_response(
            {
                "object": "list",
                "data": [request_object(record) for record in response.requests],
                "has_more": bool(response.next_page_token),
                "next_page_token": response.next_page_token or None,
            }
        )

    async def retrieve_request(self, request_id: str, ctx: RequestContext) -> Response:
        response = await self._router.get_request(
            accounts_pb2.GetRequestRequest(request_id=request_id),
            metadata=ctx.metadata(),
            grpc_timeout=self._grpc_timeout(ctx),
        )
        return json_response(request_object(response.request))
