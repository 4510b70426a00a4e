"""The caller's key as the edge forwards it: the router checks it (tests/router/test_accounting.py,
tests/e2e); the edge refuses only a request without a usable key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.edge.auth import bearer_token, forwarded_api_key
from services.edge.errors import ApiError
from services.edge.settings import EdgeSettings


def refused(header: str | None) -> ApiError:
    with pytest.raises(ApiError) as caught:
        forwarded_api_key(header)
    assert (caught.value.status, caught.value.type, caught.value.code) == (
        401,
        "authentication_error",
        "invalid_api_key",
    )
    return caught.value


def test_the_bearer_key_is_forwarded_whatever_it_is():
    assert forwarded_api_key("Bearer sy-anything") == "sy-anything"
    assert forwarded_api_key("bearer  sy-anything ") == "sy-anything"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic sy-secret"])
def test_a_request_without_a_bearer_key_is_refused_as_openai_refuses_it(header):
    assert "didn't provide an API key" in refused(header).message


def test_a_key_that_cannot_travel_as_grpc_metadata_is_refused_here():
    assert refused("Bearer sy-\u00e9t\u00e9").message == "Incorrect API key provided."


@pytest.mark.parametrize(
    ("setting", "replacement"),
    [
        ("api_key_hashes", "switchyard keys create"),
        ("allow_unauthenticated", "SWITCHYARD_ROUTER_ACCOUNTING__ENABLED=false"),
    ],
)
def test_retired_key_settings_are_refused_saying_what_replaced_them(setting, replacement, monkeypatch):
    monkeypatch.setenv(f"SWITCHYARD_EDGE_{setting.upper()}", '["sy-plain-text-key"]')
    with pytest.raises(ValidationError) as caught:
        EdgeSettings()
    assert replacement in str(caught.value)
    assert "sy-plain-text-key" not in str(caught.value)


def test_bearer_token_parsing():
    assert bearer_token("Bearer  abc ") == "abc"
    assert bearer_token("Token abc") is None
