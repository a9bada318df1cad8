"""Unit tests for ``grandhotel.tokens``: minting, hashing, checking, Bearer parsing."""

from __future__ import annotations

import hashlib
import re

import pytest

from grandhotel import tokens


def test_mint_gives_256_bits_of_url_safe_text() -> None:
    token = tokens.mint()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)  # 32 bytes, base64url, no padding


def test_mint_never_repeats() -> None:
    assert len({tokens.mint() for _ in range(1000)}) == 1000


def test_digest_is_sha256() -> None:
    assert tokens.digest("abc") == hashlib.sha256(b"abc").digest()
    assert len(tokens.digest(tokens.mint())) == 32


def test_the_right_token_matches() -> None:
    token = tokens.mint()
    assert tokens.matches(token, tokens.digest(token)) is True


def test_a_wrong_token_does_not_match() -> None:
    assert tokens.matches(tokens.mint(), tokens.digest(tokens.mint())) is False


def test_no_token_never_matches_even_the_hash_of_nothing() -> None:
    assert tokens.matches(None, tokens.digest("")) is False


def test_no_stored_hash_never_matches() -> None:
    assert tokens.matches(tokens.mint(), None) is False
    assert tokens.matches(None, None) is False
    assert tokens.matches("no ticket has this hash", None) is False


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("", None),
        (None, None),
        ("abc", None),
    ],
)
def test_bearer(header: str | None, expected: str | None) -> None:
    assert tokens.bearer(header) == expected


def test_matches_any_finds_the_token_among_several() -> None:
    token = tokens.mint()
    stored = [tokens.digest(tokens.mint()), tokens.digest(token), tokens.digest(tokens.mint())]
    assert tokens.matches_any(token, stored) is True


def test_matches_any_without_the_token() -> None:
    stored = [tokens.digest(tokens.mint()) for _ in range(3)]
    assert tokens.matches_any(tokens.mint(), stored) is False
    assert tokens.matches_any(None, stored) is False


def test_matches_any_with_no_stored_hashes() -> None:
    assert tokens.matches_any(tokens.mint(), []) is False
    assert tokens.matches_any(None, []) is False
