"""The hotel's doors: what every connection passes before a route sees it.

An ASGI wrapper around the app that enforces, before any route runs:

* at most ``max_connections`` requests and WebSockets open at once (503), and
  ``max_connections_per_client`` from one client address (429);
* for WebSockets, the ``Origin`` allow-list: a browser page from a site not in
  ``allowed_origins`` gets 403 (cross-site WebSocket hijacking); clients that
  send no Origin (scripts, mobile apps) pass when ``allow_missing_origin``.

It also mends hypercorn where it would hurt the hotel (hypercorn 0.17-0.18):

* permessage-deflate is turned off (hypercorn offers it to every client and has
  no setting for it): compression costs CPU per frame, lets a small frame
  inflate into a large one, and mixes secrets with guessable data;
* one connection can never take the server down: hypercorn runs every
  connection in the server's nursery, so an exception escaping one (such as the
  ``BusyResourceError`` it raises when a guest closes a WebSocket while a frame
  is being sent: its ``_close`` shuts the socket without the send lock) would
  cancel every other connection. Such an error now ends that connection only,
  and is logged.

The rest of the limits are hypercorn's own settings, set in ``hotel.py``.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
from typing import Any, cast

import trio
from hypercorn.protocol import ws_stream
from hypercorn.trio import tcp_server
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

logger = logging.getLogger(__name__)


def _contained(run: Any) -> Any:
    @functools.wraps(run)
    async def run_contained(self: tcp_server.TCPServer) -> None:
        try:
            await run(self)
        except Exception:
            logger.exception("a connection failed; closing it alone")
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.stream.aclose()

    run_contained.grandhotel_contained = True  # type: ignore[attr-defined]
    return run_contained


def _tolerant(protocol_send: Any) -> Any:
    @functools.wraps(protocol_send)
    async def protocol_send_tolerant(self: tcp_server.TCPServer, event: Any) -> None:
        # BusyResourceError: hypercorn's _close is shutting the socket down (without
        # the send lock): there is nobody left to send to. (try/except rather than
        # contextlib.suppress: this runs for every frame and response sent.)
        try:  # noqa: SIM105
            await protocol_send(self, event)
        except trio.BusyResourceError:
            pass

    return protocol_send_tolerant


if not getattr(tcp_server.TCPServer.run, "grandhotel_contained", False):
    tcp_server.TCPServer.run = _contained(tcp_server.TCPServer.run)  # type: ignore[method-assign]
    tcp_server.TCPServer.protocol_send = _tolerant(tcp_server.TCPServer.protocol_send)  # type: ignore[method-assign]


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
