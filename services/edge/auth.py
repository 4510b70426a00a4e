"""Bearer API keys, checked against sha256 digests from configuration (keys are never stored)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from services.edge.errors import invalid_api_key

_MISSING_KEY = (
    "You didn't provide an API key. Provide it in an Authorization header using Bearer auth "
    "(Authorization: Bearer YOUR_KEY)."
)
_WRONG_KEY = "Incorrect API key provided."


def bearer_token(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer KEY` header, or None when there is none."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class ApiKeyVerifier:
    """Accepts the keys whose sha256 is configured; with `required` false, lets anyone through.

    Either way the caller's key is returned so that it can be forwarded to the router, which may
    hold its own key store (credits, limits).
    """

    def __init__(self, key_hashes: Iterable[str], *, required: bool) -> None:
        self._digests = [digest.encode() for digest in key_hashes]
        self._required = required

    def verify(self, authorization: str | None) -> str | None:
        key = bearer_token(authorization)
        if key is None:
            if self._required:
                raise invalid_api_key(_MISSING_KEY)
            return None
        # The key travels on as gRPC metadata, which takes printable ASCII only.
        if not (key.isascii() and key.isprintable()):
            raise invalid_api_key(_WRONG_KEY)
        if self._required and not self._is_accepted(key):
            raise invalid_api_key(_WRONG_KEY)
        return key

    def _is_accepted(self, key: str) -> bool:
        digest = hashlib.sha256(key.encode()).hexdigest().encode()
        accepted = False
        # Compare with every digest in constant time; no early exit tells which one matched.
        for candidate in self._digests:
            accepted |= hmac.compare_digest(digest, candidate)
        return accepted
