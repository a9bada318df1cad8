"""Bare routes for the benchmark's side-by-side runs (``GRANDHOTEL_BENCH_ROUTES=1``).

They answer like the real ones without the hotel behind them, so that one run
can measure what the safe, the butler and the concierge cost on top of
quart-trio and hypercorn themselves:

- ``POST /_bench/tickets``: validates and answers the same 201 JSON as
  ``POST /tickets`` without touching the safe or hiring a butler.
- ``WS /_bench/live?frames=N&interval=S``: sends a snapshot and N progress
  frames shaped like a butler's, S seconds apart, then a ``completed`` frame and
  1000, straight from the route.

Off by default; never enable them on a public server.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import trio
from quart import Response, websocket
from quart.globals import websocket_ctx
from quart_trio import QuartTrio

from grandhotel import butler, tickets, tokens

if TYPE_CHECKING:
    from grandhotel.front_desk import FrontDesk


def install(app: QuartTrio, desk: FrontDesk) -> None:
    """Add the bare routes to ``app``."""

    async def bare_ticket() -> Response:
        body = await desk._json_body()
        service, args, guest = desk._validate(body)
        ticket_id = uuid.uuid4()
        now = butler.utc_now()
        notebook = tickets.Notebook(
            ticket_id=str(ticket_id), guest=guest, service=service.name, args=args,
            butler=tickets.butler_name(ticket_id), status=tickets.Status.QUEUED, done=0,
            total=service.total(args), message=None, seq=1, attempt=0,
            created_at=now, updated_at=now,
        )  # fmt: skip
        view = tickets.view(notebook, token=tokens.mint())
        return Response(json.dumps(view), status=201, content_type="application/json",
                        headers={"Location": f"/tickets/{ticket_id}"})  # fmt: skip

    async def bare_live() -> None:
        frames = int(websocket.args.get("frames", "10"))
        interval = float(websocket.args.get("interval", "0"))
        await websocket.accept()
        send = websocket_ctx.websocket.send  # as the concierge does: no proxy per frame
        state: dict[str, Any] = {"ticket": str(uuid.uuid4()), "status": "in_progress",
                                 "total": frames}  # fmt: skip
        await send(butler.encode(dict(state, type="snapshot", seq=1, done=0)))
        for done in range(1, frames + 1):
            await trio.sleep(interval)
            body = dict(state, type="progress", seq=done + 1, done=done,
                        percent=tickets.percent(done, frames), at=butler.utc_now(),
                        message=f"Suit {done}/{frames} complete")  # fmt: skip
            await send(butler.encode(body))
        await send(butler.encode(dict(state, type="completed", seq=frames + 2)))
        await websocket.close(1000)

    app.add_url_rule("/_bench/tickets", "bench_tickets", bare_ticket, methods=["POST"])
    app.add_websocket("/_bench/live", "bench_live", bare_live)
