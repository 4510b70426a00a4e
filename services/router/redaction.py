"""Who may see real model names. Hosted routers answer "redacted" so that callers cannot reverse
engineer the routing; configuration names the exceptions (everyone, or given API keys)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

REDACTED = "redacted"


def hash_api_key(key: str) -> str:
    """The form keys are configured in: sha256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_key(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The API key of `authorization: Bearer KEY` call metadata, if any."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value[:7].lower() == "bearer ":
            return value[7:].strip() or None
    return None


class RevealPolicy:
    def __init__(self, reveal_to_everyone: bool, key_hashes: Iterable[str]) -> None:
        self._everyone = reveal_to_everyone
        self._key_hashes = frozenset(key_hashes)

    def reveals(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        if self._everyone:
            return True
        if not self._key_hashes:
            return False
        key = bearer_key(metadata)
        return key is not None and hash_api_key(key) in self._key_hashes
