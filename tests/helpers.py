"""Clients for tests: HTTP through httpx, WebSockets through trio-websocket."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import trio
import trio_websocket

TOKENS: list[str] = []
"""Tokens handed out to the current test (checked against every log)."""


def ws_url(base_url: str, ticket_id: str, after: int | None = None) -> str:
    """The ``/live`` URL of a ticket on a server at ``base_url``."""
    url = base_url.replace("http://", "ws://") + f"/tickets/{ticket_id}/live"
    return url if after is None else f"{url}?after={after}"


async def create(
    client: httpx.AsyncClient,
    *,
    service: str = "laundry",
    args: dict[str, Any] | None = None,
    guest: str = "room-412",
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST a ticket and return the 201 body."""
    body = {"service": service, "args": args if args is not None else {"suits": 3}, "guest": guest}
    response = await client.post("/tickets", json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    TOKENS.append(created["token"])
    return created


def bearer(token: str) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": f"Bearer {token}"}


class Watch:
    """One WebSocket watcher: every frame it got and how the server closed."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.opened = trio.Event()


async def watch(
    base_url: str,
    ticket_id: str,
    token: str,
    *,
    after: int | None = None,
    result: Watch | None = None,
    send: list[dict[str, Any]] | None = None,
) -> Watch:
    """Watch a ticket until the server closes; return what was seen."""
    result = result or Watch()
    headers = [("Authorization", f"Bearer {token}")] if token else []
    async with trio_websocket.open_websocket_url(
        ws_url(base_url, ticket_id, after), extra_headers=headers
    ) as ws:
        result.opened.set()
        for message in send or []:
            await ws.send_message(json.dumps(message))
        try:
            while True:
                result.events.append(json.loads(await ws.get_message()))
        except trio_websocket.ConnectionClosed as closed:
            result.close_code = closed.reason.code
    return result


def assert_one_stream(events: list[dict[str, Any]], terminal: str) -> None:
    """Snapshot first, seqs strictly increasing, exactly one terminal event, last."""
    numbered = [event for event in events if "seq" in event]
    assert numbered[0]["type"] == "snapshot", numbered[0]
    seqs = [event["seq"] for event in numbered]
    assert seqs == sorted(set(seqs)), seqs
    terminals = [e for e in numbered if e["type"] in ("completed", "failed", "cancelled")]
    assert [e["type"] for e in terminals] == [terminal], terminals
    assert numbered[-1] is terminals[0]


def assert_gap_free(events: list[dict[str, Any]]) -> None:
    """Consecutive seqs: nothing between the snapshot and the end was skipped."""
    seqs = [event["seq"] for event in events if "seq" in event]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


def raw_websocket(
    port: int, ticket: dict[str, Any], extra: str = "", receive_buffer: int | None = None
) -> socket.socket:
    """A bare socket that sent a WebSocket handshake for ``ticket`` (blocking; for threads).

    For clients that misbehave on purpose: never read, never answer pings, send
    broken frames. ``extra`` holds more header lines, each ending in CRLF.
    """
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        (
            f"GET /tickets/{ticket['id']}/live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}"
            f"Authorization: Bearer {ticket['token']}\r\n\r\n"
        ).encode()
    )
    return sock


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The HTTP head of the server's answer, and whatever followed it."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest
