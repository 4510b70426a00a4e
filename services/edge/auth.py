"""The caller's API key, as the edge forwards it to the router. The router owns keys, credits and
limits and checks the key on every call (issue 5: one owner of state), so internal gRPC callers
and REST callers are authenticated alike. The edge only refuses a request that carries no usable
key at all, as OpenAI does before it looks at the body (OpenAI clients always send one; with the
router's accounting disabled any key is accepted). A wrong key with a bad body is a 401 too: the
body's 400 waits for the router's key check (serving.parse_authenticated)."""

from __future__ import annotations

from services.edge.errors import invalid_api_key

_MISSING_KEY = (
    "You didn't provide an API key. Provide it in an Authorization header using Bearer auth "
    "(Authorization: Bearer YOUR_KEY)."
)
_UNUSABLE_KEY = "Incorrect API key provided."


def bearer_token(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer KEY` header, or None when there is none."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def forwarded_api_key(authorization: str | None) -> str:
    """The key to forward to the router. 401 without one, and for one that cannot travel as gRPC
    metadata (anything but printable ASCII cannot be anyone's key)."""
    key = bearer_token(authorization)
    if key is None:
        raise invalid_api_key(_MISSING_KEY)
    if not (key.isascii() and key.isprintable()):
        raise invalid_api_key(_UNUSABLE_KEY)
    return key
