"""Errors as ``application/problem+json`` (RFC 9457), the only error shape we send."""

from __future__ import annotations

import http
import json
from typing import Any, Final

CONTENT_TYPE: Final = "application/problem+json"


class Problem(Exception):
    """An HTTP error with a reason for the client; raise it from a route.

    Args:
        status: the HTTP status code.
        detail: what went wrong, for a human, without secrets.
        headers: extra response headers (``Retry-After``, say).
    """

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The problem document."""
        return document(self.status, self.detail)


def document(status: int, detail: str) -> dict[str, Any]:
    """A problem document for ``status`` with ``detail``."""
    phrase = http.HTTPStatus(status).phrase
    return {
        "type": "about:blank",
        "title": phrase,
        "status": status,
        "detail": detail,
    }


def encode(status: int, detail: str) -> str:
    """The problem document as JSON text."""
    return json.dumps(document(status, detail))
