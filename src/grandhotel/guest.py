"""``grandhotel watch``: a guest on the command line, printing a ticket's live events."""

from __future__ import annotations

import json
import sys

import trio
import trio_websocket


async def watch(url: str, token: str, *, cancel: bool = False) -> int:
    """Print every event of a ticket's ``/live`` stream; return 0 once it ended.

    Args:
        url: the ticket's WebSocket URL (``ws://host:port/tickets/<id>/live``).
        token: the ticket's token.
        cancel: ask the butler to cancel the ticket right after connecting.
    """
    headers = [(b"Authorization", f"Bearer {token}".encode())]
    try:
        async with trio_websocket.open_websocket_url(url, extra_headers=headers) as ws:
            if cancel:
                await ws.send_message(json.dumps({"type": "cancel"}))
            while True:
                event = json.loads(await ws.get_message())
                print(_line(event), flush=True)
    except trio_websocket.ConnectionRejected as rejected:
        print(f"refused: HTTP {rejected.status_code}", file=sys.stderr)
        return 1
    except trio_websocket.ConnectionClosed as closed:
        reason = closed.reason
        code = reason.code if reason is not None else None
        print(f"closed: {code} {reason.name if reason else ''}", file=sys.stderr)
        return 0 if code == 1000 else 1


def _line(event: dict[str, object]) -> str:
    if event.get("type") in ("snapshot", "progress", "status"):
        bar = "#" * (int(str(event.get("percent", 0))) // 5)
        return (
            f"{event['type']:>9} seq={event['seq']} {event['status']:<11} "
            f"[{bar:<20}] {event['percent']:>3}% {event.get('message') or ''}"
        )
    return json.dumps(event)


def main(url: str, token: str, cancel: bool) -> int:
    """Run ``watch`` under trio."""
    return trio.run(lambda: watch(url, token, cancel=cancel))
