"""gRPC statuses from the router -> the HTTP status and OpenAI error object a client gets."""

from __future__ import annotations

import grpc
import pytest

from services.common.errors import (
    ContextLengthExceededError,
    DeadlineExceededError,
    InsufficientQuotaError,
    InvalidApiKeyError,
    ModelNotFoundError,
    NoHealthyReplicaError,
    PermissionDeniedError,
    RateLimitExceededError,
    RemoteError,
    reason_name,
)
from services.edge.errors import INTERNAL_MESSAGE, from_remote
from tests.openai_schema import assert_matches


@pytest.mark.parametrize(
    ("error", "status", "error_type", "code"),
    [
        (
            ContextLengthExceededError("too long", param="messages"),
            400,
            "invalid_request_error",
            "context_length_exceeded",
        ),
        (InvalidApiKeyError("who are you"), 401, "authentication_error", "invalid_api_key"),
        (PermissionDeniedError("not yours"), 403, "permission_error", "permission_denied"),
        (ModelNotFoundError("a/b"), 404, "invalid_request_error", "model_not_found"),
        (InsufficientQuotaError("no credits"), 429, "insufficient_quota", "insufficient_quota"),
        (RateLimitExceededError("slow down"), 429, "rate_limit_error", "rate_limit_exceeded"),
        (DeadlineExceededError("late"), 504, "timeout_error", "timeout"),
        (NoHealthyReplicaError("all down"), 503, "server_error", "no_healthy_replica"),
    ],
)
def test_typed_router_errors_keep_their_message_and_reason(error, status, error_type, code):
    api_error = from_remote(
        RemoteError(
            code=error.code, message=error.message, reason=reason_name(error.reason), metadata=error.metadata
        )
    )
    assert (api_error.status, api_error.type, api_error.code) == (status, error_type, code)
    assert api_error.message == error.message
    assert_matches("ErrorResponse", api_error.body())
    if status == 503:
        assert api_error.headers == {"Retry-After": "1"}


def test_param_and_retry_after_come_from_error_info_metadata():
    api_error = from_remote(
        RemoteError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", "RATE_LIMIT_EXCEEDED", {"retry_after": "2.5"}
        )
    )
    assert api_error.headers == {"Retry-After": "3"}
    api_error = from_remote(
        RemoteError(grpc.StatusCode.INVALID_ARGUMENT, "bad", "INVALID_REQUEST", {"param": "temperature"})
    )
    assert api_error.param == "temperature"


def test_an_invalid_value_the_engine_refused_has_code_null_like_the_edges_own_refusals():
    api_error = from_remote(
        RemoteError(grpc.StatusCode.INVALID_ARGUMENT, "top_k: -2", "INVALID_REQUEST", {"param": "top_k"})
    )
    assert (api_error.status, api_error.type, api_error.code, api_error.param) == (
        400,
        "invalid_request_error",
        None,
        "top_k",
    )


def test_out_of_credits_is_insufficient_quota_as_openai_sends_it_and_not_worth_retrying():
    api_error = from_remote(
        RemoteError(grpc.StatusCode.RESOURCE_EXHAUSTED, "Top up the key.", "INSUFFICIENT_QUOTA")
    )
    assert (api_error.status, api_error.type, api_error.code) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
    )
    # The OpenAI SDKs retry a 429 unless told not to; waiting brings no credits.
    assert api_error.headers == {"x-should-retry": "false"}


RATE_LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": "2",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "30s",
}


@pytest.mark.parametrize(
    ("limit", "retry_after", "error_type", "headers"),
    [
        # OpenAI's own types name the limit that was hit.
        ("requests", "29.2", "requests", {"Retry-After": "30", **RATE_LIMIT_HEADERS}),
        ("tokens", "3", "tokens", {"Retry-After": "3", **RATE_LIMIT_HEADERS}),
        # Larger than the key's whole token limit: no wait helps.
        ("tokens", None, "tokens", {"x-should-retry": "false", **RATE_LIMIT_HEADERS}),
        # A limit OpenAI does not have: STYLE.md's type.
        ("concurrency", "1", "rate_limit_error", {"Retry-After": "1", **RATE_LIMIT_HEADERS}),
    ],
)
def test_rate_limits_name_the_limit_and_carry_openais_headers(limit, retry_after, error_type, headers):
    metadata = {"limit": limit, **RATE_LIMIT_HEADERS}
    if retry_after is not None:
        metadata["retry_after"] = retry_after
    api_error = from_remote(
        RemoteError(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", "RATE_LIMIT_EXCEEDED", metadata)
    )
    assert (api_error.status, api_error.type, api_error.code) == (429, error_type, "rate_limit_exceeded")
    assert api_error.headers == headers
    assert_matches("ErrorResponse", api_error.body())


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.CANCELLED],
)
def test_other_failures_are_a_generic_500(code):
    api_error = from_remote(RemoteError(code, "Traceback ... /srv/router/secret.py line 3"))
    assert (api_error.status, api_error.type, api_error.code) == (500, "server_error", None)
    assert api_error.message == INTERNAL_MESSAGE


def test_transport_failures_do_not_leak_their_text():
    api_error = from_remote(
        RemoteError(
            grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: 10.0.0.7:50051"
        )
    )
    assert api_error.status == 503 and "10.0.0.7" not in api_error.message
    assert api_error.headers == {"Retry-After": "1"}
    deadline = from_remote(RemoteError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
    assert (deadline.status, deadline.type, deadline.code) == (504, "timeout_error", "timeout")
