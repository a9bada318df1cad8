"""Per-ticket tokens: minted at random, stored only as a hash, checked in constant time.

A token has 256 bits from ``secrets``; the safe keeps its SHA-256. A fast hash is
right here: the token is random and long, so there is nothing to brute-force
that a slow hash would protect. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

TOKEN_BYTES: Final = 32
_DUMMY_HASH: Final = hashlib.sha256(b"no ticket has this hash").digest()


def mint() -> str:
    """A new token (URL-safe text, 256 random bits)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def digest(token: str) -> bytes:
    """The hash the safe stores for ``token``."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def matches(token: str | None, stored_hash: bytes | None) -> bool:
    """Whether ``token`` is the one behind ``stored_hash``, in constant time.

    Does the same work when there is no token or no ticket, so that a wrong
    guess costs the same whether or not the ticket exists.
    """
    presented = digest(token or "")
    expected = stored_hash if stored_hash is not None else _DUMMY_HASH
    same = hmac.compare_digest(presented, expected)
    return same and token is not None and stored_hash is not None


def matches_any(token: str | None, stored_hashes: list[bytes]) -> bool:
    """Whether ``token`` is behind any of ``stored_hashes``; compares with every one."""
    if not stored_hashes:
        return matches(token, None)
    found = False
    for stored in stored_hashes:
        found |= matches(token, stored)
    return found


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
