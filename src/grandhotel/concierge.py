"""The personal concierge: one WebSocket session per guest connection.

Theory of operation
-------------------
The handshake is checked before the upgrade: the ticket's token (``Authorization:
Bearer`` or the ``bearer.<token>`` subprotocol, answered with ``bearer``) must
match, or the guest gets the same HTTP 404 as for a ticket that does not exist.

A live ticket's session subscribes to the butler's line, which hands back a
snapshot and a mailbox atomically, so nothing falls between the two. The
session writes the snapshot, then every frame from the mailbox; a write that
took longer than ``write_deadline_seconds`` closes the guest with 1008 (slow
reader), who may resume with ``?after=<seq>``. (A guest that stops reading
altogether never finishes a write: the idle timeout drops it.) Meanwhile a
reader task answers the guest's ``ping`` (a ``pong`` queued in order with the events) and forwards
``cancel`` to checkout. After the terminal event the session closes with 1000;
a mailbox closed without one means the server is going away: 1001.

A finished ticket's session is the snapshot from the safe, the terminal event,
and 1000.

Guests are held to a few rules (limits in config): binary frames close with
1003, text that is not a JSON object with 1007, any other message than
``ping``/``cancel`` or more than ``guest_messages_per_second`` with 1008, a
message over ``ws_max_message_bytes`` with 1009 (hypercorn), and at most
``max_watchers_per_ticket`` watch one ticket (HTTP 429 before the upgrade).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import trio
from quart import Response, websocket
from quart.globals import websocket_ctx
from quart_trio import QuartTrio

from grandhotel import backoff, butler, checkout, mailbox, problems, tickets, tokens
from grandhotel.safe import vault

if TYPE_CHECKING:
    from grandhotel.hotel import Hotel

logger = logging.getLogger(__name__)

SUBPROTOCOL_PREFIX: Final = "bearer."
CLOSE_DONE: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_UNSUPPORTED: Final = 1003
CLOSE_INVALID: Final = 1007
CLOSE_POLICY: Final = 1008
REASONS: Final = {
    CLOSE_GOING_AWAY: "the server is going away; resume with ?after=",
    CLOSE_UNSUPPORTED: "send JSON text frames",
    CLOSE_INVALID: "send a JSON object",
    CLOSE_POLICY: 'policy: send {"type": "ping"} or {"type": "cancel"}, slowly; read promptly',
}
PONG: Final = json.dumps({"type": "pong"})


def handshake_token() -> tuple[str | None, str | None]:
    """The token offered in the handshake, and the subprotocol to answer with."""
    token = tokens.bearer(websocket.headers.get("Authorization"))
    if token is not None:
        return token, None
    offered = websocket.requested_subprotocols
    for protocol in offered:
        if protocol.startswith(SUBPROTOCOL_PREFIX) and len(protocol) > len(SUBPROTOCOL_PREFIX):
            # The answer must be one of the offered protocols: "bearer" when the
            # browser offered it too (recommended), else the one carrying the token.
            return protocol[
                len(SUBPROTOCOL_PREFIX) :
            ], "bearer" if "bearer" in offered else protocol
    return None, None


def refuse(status: int, detail: str) -> Response:
    """An HTTP answer to a handshake, before any upgrade."""
    return Response(problems.encode(status, detail), status=status,
                    content_type=problems.CONTENT_TYPE)  # fmt: skip


def parse_after(raw: str | None) -> int | None:
    """``?after=`` as a seq, or None if it is not a whole number."""
    if raw is None:
        return 0
    return int(raw) if raw.isdigit() and len(raw) <= 18 else None


class Concierge:
    """The ``/tickets/{id}/live`` WebSocket route, bound to one hotel."""

    def __init__(self, hotel: Hotel) -> None:
        self.hotel = hotel

    def install(self, app: QuartTrio) -> None:
        """Add the WebSocket route to ``app``."""
        app.add_websocket("/tickets/<ticket_id>/live", "live", self.live)

    async def live(self, ticket_id: str) -> Response | None:
        """One guest's session; returns an HTTP response only to refuse the upgrade."""
        after = parse_after(websocket.args.get("after"))
        if after is None:
            return refuse(400, "after must be a whole number (a seq)")
        token, subprotocol = handshake_token()
        try:
            found = await self.hotel.locate(ticket_id, token)
        except vault.SafeUnavailable:
            return refuse(503, "the safe is unreachable; try again")
        if found is None:
            return refuse(404, "no such ticket")
        line, notebook = found
        if line is not None and len(line.watchers) >= self.hotel.settings.max_watchers_per_ticket:
            return refuse(429, "too many watchers on this ticket")
        await websocket.accept(subprotocol=subprotocol)
        if line is None or line.notebook.status.terminal:
            # Ended (perhaps with the butler not yet gone): snapshot, ending, 1000.
            await self._archived(line.notebook if line else notebook, after)
        else:
            await self._attend(line, after)
        return None

    async def _archived(self, notebook: tickets.Notebook, after: int) -> None:
        await websocket.send(butler.encode(tickets.snapshot(notebook)))
        if notebook.seq + 1 > after:
            ending = dict(tickets.snapshot(notebook), type=notebook.status.value)
            ending["seq"] = notebook.seq + 1
            await websocket.send(butler.encode(ending))
        await websocket.close(CLOSE_DONE)

    async def _attend(self, line: butler.Line, after: int) -> None:
        snapshot, box = line.subscribe(after)
        codes: list[int] = []
        self.hotel.sessions += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._until, nursery.cancel_scope, codes,
                                   self._deliver(snapshot, box, line))  # fmt: skip
                nursery.start_soon(self._until, nursery.cancel_scope, codes,
                                   self._listen(line, box))  # fmt: skip
        finally:
            self.hotel.sessions -= 1
            line.unsubscribe(box)
        await websocket.close(codes[0], REASONS.get(codes[0], ""))

    @staticmethod
    async def _until(scope: trio.CancelScope, codes: list[int], part: Awaitable[int]) -> None:
        """Run one half of a session; the first half to end decides the close code."""
        codes.append(await part)
        scope.cancel()

    async def _deliver(self, snapshot: str, box: mailbox.Mailbox, line: butler.Line) -> int:
        """Write the snapshot and every event; return the close code."""
        send = websocket_ctx.websocket.send  # the session's own, not the proxy per frame
        if not await write_frames(send, snapshot, box, self.hotel.settings.write_deadline_seconds):
            logger.info("closing a watcher of %s: slower than the write deadline",
                        line.ticket_id)  # fmt: skip
            return CLOSE_POLICY
        return CLOSE_DONE if line.notebook.status.terminal else CLOSE_GOING_AWAY

    async def _listen(self, line: butler.Line, box: mailbox.Mailbox) -> int:
        """Answer the guest (``ping`` -> ``pong``, ``cancel``); a close code on abuse."""
        settings = self.hotel.settings
        bucket = backoff.TokenBucket(
            settings.guest_messages_per_second, settings.guest_message_burst, trio.current_time()
        )
        while True:
            message = await websocket.receive()
            if not bucket.take(trio.current_time()):
                return CLOSE_POLICY
            kind, code = classify(message)
            if code is not None:
                return code
            if kind == "ping":
                box.push_control(PONG)
            else:
                await self._cancel(line, box)

    async def _cancel(self, line: butler.Line, box: mailbox.Mailbox) -> None:
        try:
            await self.hotel.checkout.end(
                line.notebook, line, tickets.Status.CANCELLED, "cancelled by the guest"
            )
        except checkout.AlreadyEnded:
            pass  # the terminal event is on its way
        except vault.SafeUnavailable:
            box.push_control(
                json.dumps({"type": "error", "detail": "the safe is unreachable; try again"})
            )


async def write_frames(
    send: Callable[[str], Awaitable[None]], first: str, box: mailbox.Mailbox, deadline: float
) -> bool:
    """Write ``first``, then every frame from ``box`` until it is closed and
    drained (True); False as soon as one write took over ``deadline`` seconds."""
    frame: str | None = first
    # The run's clock, looked up once: trio.current_time() is three calls.
    now = trio.lowlevel.current_clock().current_time
    while frame is not None:
        # Timed, not cancelled: hypercorn shields the socket write itself, so
        # a deadline could only ever land once the write is over anyway, and
        # arming one costs two updates of trio's deadline heap per frame.
        started = now()
        await send(frame)
        if now() - started > deadline:
            return False
        frame = await box.get()
    return True


def classify(message: str | bytes) -> tuple[str | None, int | None]:
    """A guest's message as ``(kind, None)``, or ``(None, close code)`` when refused.

    Binary frames: 1003. Text that is not a JSON object: 1007. An object whose
    ``type`` is not ``ping`` or ``cancel``: 1008.
    """
    if isinstance(message, bytes):
        return None, CLOSE_UNSUPPORTED
    try:
        parsed = json.loads(message)
    except ValueError:
        return None, CLOSE_INVALID
    if not isinstance(parsed, dict):
        return None, CLOSE_INVALID
    kind = parsed.get("type")
    if kind not in ("ping", "cancel"):
        return None, CLOSE_POLICY
    return kind, None
