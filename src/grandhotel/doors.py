"""The hotel's doors: what every connection passes before a route sees it.

An ASGI wrapper around the app that enforces, before any route runs:

* at most ``max_connections`` requests and WebSockets open at once (503), and
  ``max_connections_per_client`` from one client address (429);
* for WebSockets, the ``Origin`` allow-list: a browser page from a site not in
  ``allowed_origins`` gets 403 (cross-site WebSocket hijacking); clients that
  send no Origin (scripts, mobile apps) pass when ``allow_missing_origin``.

It also turns permessage-deflate off in hypercorn (which offers it to every
client and has no setting for it): compression costs CPU per frame, lets a
small frame inflate into a large one, and mixes secrets with guessable data.
The rest of the limits are hypercorn's own settings, set in ``hotel.py``.
"""

from __future__ import annotations

import collections
import functools
import json
from typing import Any, cast

from hypercorn.protocol import ws_stream
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from hypercorn.typing import Scope as ASGIScope

from grandhotel import config, problems

Scope = dict[str, Any]


def _without_compression(accept: Any) -> Any:
    @functools.wraps(accept)
    def accept_plain(self: ws_stream.Handshake, *args: Any, **kwargs: Any) -> Any:
        self.extensions = None  # never negotiate permessage-deflate
        return accept(self, *args, **kwargs)

    accept_plain.grandhotel_plain = True  # type: ignore[attr-defined]
    return accept_plain


if not getattr(ws_stream.Handshake.accept, "grandhotel_plain", False):
    ws_stream.Handshake.accept = _without_compression(ws_stream.Handshake.accept)  # type: ignore[method-assign]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class Doors:
    """Wraps an ASGI app with the connection limits and the Origin check.

    Args:
        app: the ASGI app (the front desk and concierge).
        settings: the hotel's config.
    """

    def __init__(self, app: Any, settings: config.HotelConfig) -> None:
        self.app = app
        self.settings = settings
        self.open = 0
        self.per_client: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[int] = collections.Counter()

    async def __call__(
        self, asgi_scope: ASGIScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        scope = cast(Scope, asgi_scope)
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        refusal = self._refusal(scope, client)
        if refusal is not None:
            self.refused[refusal[0]] += 1
            await self._refuse(scope, send, *refusal)
            return
        self.open += 1
        self.per_client[client] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1
            self.per_client[client] -= 1
            if not self.per_client[client]:
                del self.per_client[client]

    def _refusal(self, scope: Scope, client: str) -> tuple[int, str] | None:
        if self.open >= self.settings.max_connections:
            return 503, "the hotel is full; try again"
        if self.per_client[client] >= self.settings.max_connections_per_client:
            return 429, "too many connections from your address"
        if scope["type"] == "websocket":
            origin = _header(scope, b"origin")
            if origin is None and not self.settings.allow_missing_origin:
                return 403, "an Origin header is required"
            if origin is not None and origin not in self.settings.allowed_origins:
                return 403, "this Origin may not open WebSockets here"
        return None

    @staticmethod
    async def _refuse(scope: Scope, asgi_send: ASGISendCallable, status: int, detail: str) -> None:
        send = cast(Any, asgi_send)
        body = json.dumps(problems.document(status, detail)).encode()
        headers = [(b"content-type", problems.CONTENT_TYPE.encode()),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        if status == 503:
            headers.append((b"retry-after", b"1"))
        prefix = "websocket.http.response" if scope["type"] == "websocket" else "http.response"
        await send({"type": f"{prefix}.start", "status": status, "headers": headers})
        await send({"type": f"{prefix}.body", "body": body})
