"""Bearer keys against configured sha256 digests."""

from __future__ import annotations

import pytest

from services.edge.auth import ApiKeyVerifier, bearer_token
from services.edge.errors import ApiError
from services.edge.settings import EdgeSettings, hash_api_key

KEY = "sy-secret"


def refused(verifier: ApiKeyVerifier, header: str | None) -> ApiError:
    with pytest.raises(ApiError) as caught:
        verifier.verify(header)
    assert (caught.value.status, caught.value.type, caught.value.code) == (
        401,
        "authentication_error",
        "invalid_api_key",
    )
    return caught.value


def test_a_configured_key_is_accepted_and_returned_for_forwarding():
    verifier = ApiKeyVerifier([hash_api_key("other"), hash_api_key(KEY)], required=True)
    assert verifier.verify(f"Bearer {KEY}") == KEY
    assert verifier.verify(f"bearer {KEY}") == KEY


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", f"Basic {KEY}", "Bearer sy-wrong", f"Bearer {KEY}x"]
)
def test_missing_or_wrong_keys_are_401(header):
    verifier = ApiKeyVerifier([hash_api_key(KEY)], required=True)
    error = refused(verifier, header)
    assert KEY not in error.message


def test_keys_that_cannot_travel_as_grpc_metadata_are_refused_even_with_auth_off():
    verifier = ApiKeyVerifier([], required=False)
    refused(verifier, "Bearer sy-\u00e9t\u00e9")
    assert verifier.verify(None) is None
    assert verifier.verify("Bearer anything") == "anything", "auth off still forwards the key to the router"


def test_no_hashes_refuses_everyone_unless_unauthenticated_access_is_allowed():
    assert EdgeSettings().auth_required
    assert not EdgeSettings(allow_unauthenticated=True).auth_required
    assert EdgeSettings(api_key_hashes=[hash_api_key(KEY)], allow_unauthenticated=True).auth_required


def test_settings_take_only_digests_and_never_echo_what_was_given():
    with pytest.raises(ValueError) as caught:
        EdgeSettings(api_key_hashes=["sy-plain-text-key"])
    assert "sy-plain-text-key" not in str(caught.value)
    assert EdgeSettings(api_key_hashes=[hash_api_key(KEY).upper()]).api_key_hashes == [hash_api_key(KEY)]


def test_bearer_token_parsing():
    assert bearer_token("Bearer  abc ") == "abc"
    assert bearer_token("Token abc") is None
