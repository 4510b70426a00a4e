"""AccountsService: usage, the request log and key administration over gRPC (the contract is
protos/switchyard/router/v1/accounts_service.proto). A thin translation onto `Accounting`.

Served by the router next to RouterService:

    accounts_service_pb2_grpc.add_AccountsServiceServicer_to_server(AccountsServicer(accounting), server)
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from services.common.errors import InvalidRequestError, PermissionDeniedError
from services.router.accounting.facade import Accounting
from services.router.accounting.keys import KeyPolicy, KeyRecord, Principal
from services.router.accounting.pricing import nanocredits_to_credits
from services.router.accounting.queries import LoggedRequest, RequestFilter, UsageBucket
from switchyard.router.v1 import accounts_service_pb2 as accounts_pb2
from switchyard.router.v1 import accounts_service_pb2_grpc as accounts_grpc

SERVICE_NAME = accounts_pb2.DESCRIPTOR.services_by_name["AccountsService"].full_name


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _datetime(message, field_name: str) -> datetime | None:
    if not message.HasField(field_name):
        return None
    return getattr(message, field_name).ToDatetime(tzinfo=UTC)


def _optional(message, field_name: str) -> int | None:
    return getattr(message, field_name) if message.HasField(field_name) else None


def api_key_message(record: KeyRecord) -> accounts_pb2.ApiKey:
    principal = record.principal
    return accounts_pb2.ApiKey(
        id=record.key_id,
        name=principal.name,
        prefix=record.prefix,
        balance=nanocredits_to_credits(record.balance_nanocredits),
        allowed_models=sorted(principal.allowed_models),
        requests_per_minute=principal.requests_per_minute,
        tokens_per_minute=principal.tokens_per_minute,
        max_concurrent_requests=principal.max_concurrent_requests,
        reveal_model_names=principal.reveal_model_names,
        admin=principal.admin,
        create_time=_timestamp(record.created_at),
        revoke_time=_timestamp(record.revoked_at),
    )


def _bucket_message(bucket: UsageBucket) -> accounts_pb2.UsageBucket:
    return accounts_pb2.UsageBucket(
        day=bucket.day.isoformat() if bucket.day else "",
        model=bucket.model,
        customer_identifier=bucket.customer_identifier,
        requests=bucket.requests,
        prompt_tokens=bucket.prompt_tokens,
        completion_tokens=bucket.completion_tokens,
        cached_tokens=bucket.cached_tokens,
        cost=nanocredits_to_credits(bucket.cost_nanocredits),
        cached_responses=bucket.cached_responses,
    )


def request_record_message(logged: LoggedRequest) -> accounts_pb2.RequestRecord:
    metadata = None
    if logged.metadata:
        metadata = struct_pb2.Struct()
        metadata.update(logged.metadata)
    return accounts_pb2.RequestRecord(
        request_id=logged.request_id,
        key_id=logged.key_id,
        create_time=_timestamp(logged.created_at),
        customer_identifier=logged.customer_identifier,
        metadata=metadata,
        model=logged.model,
        provider=logged.provider,
        category=logged.category,
        difficulty=logged.difficulty or 0.0,
        preference=logged.preference,
        prompt_tokens=logged.prompt_tokens,
        completion_tokens=logged.completion_tokens,
        cached_tokens=logged.cached_tokens,
        cost=nanocredits_to_credits(logged.cost_nanocredits),
        latency=logged.latency or 0.0,
        time_to_first_token=logged.time_to_first_token or 0.0,
        routing_time=logged.routing_time or 0.0,
        status_code=logged.status_code,
        error_reason=logged.error_reason,
        stream=logged.stream,
        attempts=logged.attempts,
        fallbacks_used=logged.fallbacks_used,
        cached=logged.cached,
        request_json=(
            json_format.MessageToJson(logged.request, preserving_proto_field_name=True, indent=None)
            if logged.request is not None
            else ""
        ),
        completions=logged.completions or [],
        log_disabled=logged.log_disabled,
    )


class AccountsServicer(accounts_grpc.AccountsServiceServicer):
    def __init__(self, accounting: Accounting, *, reveal_model_names: bool = False) -> None:
        """`reveal_model_names`: the router's global override; every caller then sees real model
        names here, as in its generation responses."""
        self._accounting = accounting
        self._reveal_everyone = reveal_model_names

    async def _caller(self, context: grpc.aio.ServicerContext) -> Principal:
        principal = await self._accounting.authenticate_metadata(context.invocation_metadata())
        if self._reveal_everyone and not principal.reveal_model_names:
            return dataclasses.replace(principal, reveal_model_names=True)
        return principal

    async def _admin(self, context: grpc.aio.ServicerContext) -> Principal:
        principal = await self._caller(context)
        if not principal.admin:
            raise PermissionDeniedError("Only admin keys can administer keys.")
        return principal

    async def GetUsage(self, request: accounts_pb2.GetUsageRequest, context) -> accounts_pb2.GetUsageResponse:
        viewer = await self._caller(context)
        report = await self._accounting.log.usage(
            viewer,
            key_id=request.key_id,
            start=_datetime(request, "start_time"),
            end=_datetime(request, "end_time"),
        )
        own = await self._accounting.keys.get(viewer.key_id)
        return accounts_pb2.GetUsageResponse(
            buckets=[_bucket_message(b) for b in report.buckets],
            total=_bucket_message(report.total),
            balance=nanocredits_to_credits(own.balance_nanocredits),
        )

    async def ListRequests(
        self, request: accounts_pb2.ListRequestsRequest, context
    ) -> accounts_pb2.ListRequestsResponse:
        viewer = await self._caller(context)
        filters = RequestFilter(
            start=_datetime(request, "start_time"),
            end=_datetime(request, "end_time"),
            customer_identifier=request.customer_identifier or None,
            model=request.model or None,
            status_code=_optional(request, "status_code"),
            key_id=request.key_id or None,
        )
        page, next_token = await self._accounting.log.list_requests(
            viewer, filters, page_size=request.page_size, page_token=request.page_token
        )
        return accounts_pb2.ListRequestsResponse(
            requests=[request_record_message(r) for r in page], next_page_token=next_token
        )

    async def GetRequest(
        self, request: accounts_pb2.GetRequestRequest, context
    ) -> accounts_pb2.GetRequestResponse:
        viewer = await self._caller(context)
        if not request.request_id:
            raise InvalidRequestError("request_id is required.", param="request_id")
        logged = await self._accounting.log.get_request(viewer, request.request_id)
        return accounts_pb2.GetRequestResponse(request=request_record_message(logged))

    async def CreateApiKey(
        self, request: accounts_pb2.CreateApiKeyRequest, context
    ) -> accounts_pb2.CreateApiKeyResponse:
        await self._admin(context)
        policy = KeyPolicy(
            name=request.name,
            allowed_models=tuple(request.allowed_models),
            requests_per_minute=_optional(request, "requests_per_minute"),
            tokens_per_minute=_optional(request, "tokens_per_minute"),
            max_concurrent_requests=_optional(request, "max_concurrent_requests"),
            reveal_model_names=request.reveal_model_names,
            admin=request.admin,
        )
        record, secret = await self._accounting.keys.create(policy, credits=request.credits)
        return accounts_pb2.CreateApiKeyResponse(api_key=api_key_message(record), secret=secret)

    async def ListApiKeys(
        self, request: accounts_pb2.ListApiKeysRequest, context
    ) -> accounts_pb2.ListApiKeysResponse:
        await self._admin(context)
        records = await self._accounting.keys.list(show_revoked=request.show_revoked)
        return accounts_pb2.ListApiKeysResponse(api_keys=[api_key_message(r) for r in records])

    async def RevokeApiKey(
        self, request: accounts_pb2.RevokeApiKeyRequest, context
    ) -> accounts_pb2.RevokeApiKeyResponse:
        await self._admin(context)
        record = await self._accounting.keys.revoke(request.key_id)
        self._accounting.forget_keys()
        return accounts_pb2.RevokeApiKeyResponse(api_key=api_key_message(record))

    async def TopUpApiKey(
        self, request: accounts_pb2.TopUpApiKeyRequest, context
    ) -> accounts_pb2.TopUpApiKeyResponse:
        await self._admin(context)
        record = await self._accounting.keys.top_up(request.key_id, request.credits)
        return accounts_pb2.TopUpApiKeyResponse(api_key=api_key_message(record))
