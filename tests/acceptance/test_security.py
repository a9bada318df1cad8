"""Nobody sees a ticket that is not theirs; nothing a client sends breaks the hotel."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
from typing import Any

import httpx
import pytest
import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from grandhotel import openapi, tickets
from helpers import (
    Watch,
    assert_one_stream,
    bearer,
    create,
    raw_websocket,
    read_head,
    watch,
    ws_url,
)


async def test_openapi_document_covers_every_route(start_hotel: Any) -> None:
    the_hotel, base = await start_hotel()
    async with httpx.AsyncClient(base_url=base) as client:
        doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    assert documented == {
        ("/tickets", "POST"), ("/tickets/{ticket_id}", "GET"), ("/tickets/{ticket_id}", "DELETE"),
        ("/guests/{guest}/history", "GET"), ("/stats", "GET"), ("/healthz", "GET"),
        ("/readyz", "GET"), ("/openapi.json", "GET"),
    }  # fmt: skip
    assert list(doc["x-websockets"]) == ["/tickets/{ticket_id}/live"]
    [laundry] = doc["components"]["schemas"]["TicketRequest"]["oneOf"]
    assert laundry["properties"]["args"]["properties"]["suits"] == {
        "type": "integer", "minimum": 1, "maximum": 100, "description": "Suits to clean.",
    }  # fmt: skip
    assert set(openapi.OPERATIONS) == {endpoint for endpoint in _endpoints(the_hotel)}


def _endpoints(the_hotel: Any) -> set[str]:
    app = the_hotel.doors.app
    return {
        rule.endpoint for rule in app.url_map.iter_rules()
        if not rule.websocket and rule.endpoint != "static"
    }  # fmt: skip


@pytest.mark.slow
async def test_fuzzing_the_api_from_its_openapi_document(start_hotel: Any) -> None:
    """1,000+ generated requests (valid and not): no 5xx, responses as documented."""
    import schemathesis  # imported here: it is slow to import
    from schemathesis.generation.modes import GenerationMode

    _, base = await start_hotel(laundry_step_seconds=0.01)
    async with httpx.AsyncClient(base_url=base) as client:
        doc = (await client.get("/openapi.json")).json()
        ticket = await create(client, args={"suits": 1})
    schema = schemathesis.openapi.from_dict(doc)
    sent: list[int] = []

    def fuzz() -> None:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @settings(max_examples=100, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))  # fmt: skip
                @given(case=operation.as_strategy(mode))
                def one(case: Any) -> None:
                    headers = {"Authorization": f"Bearer {ticket['token']}"}
                    response = case.call(base_url=base, headers=headers, timeout=10)
                    sent.append(response.status_code)
                    assert response.status_code < 500, (case.path, case.body, response.text)

                with contextlib.suppress(Unsatisfiable):  # nothing to break in /healthz
                    one()

    await trio.to_thread.run_sync(fuzz)
    assert len(sent) >= 1000
    assert any(400 <= code < 500 for code in sent)  # bad input was generated, and refused
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/readyz")).status_code == 200
        later = await create(client, args={"suits": 1})
    seen = await watch(base, later["id"], later["token"])
    assert_one_stream(seen.events, "completed")


@pytest.mark.slow
async def test_token_misuse_is_refused_alike(start_hotel: Any) -> None:
    _, base = await start_hotel(laundry_step_seconds=600)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        a = await create(client)
        b = await create(client)
        unknown = "00000000-0000-4000-8000-000000000000"
        answers = [await client.get(f"/tickets/{a['id']}", headers=bearer(b["token"]))]
        answers.append(await client.get(f"/tickets/{a['id']}"))
        answers.append(await client.get(f"/tickets/{unknown}", headers=bearer(a["token"])))
        answers.append(await client.delete(f"/tickets/{a['id']}", headers=bearer(b["token"])))
        limiter = trio.CapacityLimiter(50)
        random_answers: list[httpx.Response] = []

        async def guess() -> None:
            async with limiter:
                target = a["id"] if len(random_answers) % 2 else unknown
                headers = bearer(secrets.token_urlsafe(32))
                random_answers.append(await client.get(f"/tickets/{target}", headers=headers))

        async with trio.open_nursery() as nursery:
            for _ in range(10_000):
                nursery.start_soon(guess)
        still_mine = await client.get(f"/tickets/{a['id']}", headers=bearer(a["token"]))
    everything = answers + random_answers
    assert {r.status_code for r in everything} == {404}
    assert {r.text for r in everything} == {answers[0].text}  # nothing tells them apart
    assert {r.headers["content-type"] for r in everything} == {"application/problem+json"}
    assert still_mine.json()["status"] in ("queued", "in_progress")  # B could not cancel A


async def test_origin_allow_list(start_hotel: Any) -> None:
    _, base = await start_hotel(
        allowed_origins=("https://hotel.example",), laundry_step_seconds=0.01
    )
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client, args={"suits": 1})
    auth = ("Authorization", f"Bearer {ticket['token']}")
    with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
        async with trio_websocket.open_websocket_url(
            ws_url(base, ticket["id"]), extra_headers=[auth, ("Origin", "https://evil.example")]
        ):
            pass
    assert rejected.value.status_code == 403
    async with trio_websocket.open_websocket_url(
        ws_url(base, ticket["id"]), extra_headers=[auth, ("Origin", "https://hotel.example")]
    ) as ws:
        assert json.loads(await ws.get_message())["type"] == "snapshot"
    seen = await watch(base, ticket["id"], ticket["token"])  # no Origin: a script
    assert seen.close_code == 1000


async def test_missing_origin_can_be_refused(start_hotel: Any) -> None:
    _, base = await start_hotel(allow_missing_origin=False)
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client)
    with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
        await watch(base, ticket["id"], ticket["token"])
    assert rejected.value.status_code == 403


async def test_subprotocol_token_and_no_compression(start_hotel: Any) -> None:
    _, base = await start_hotel(laundry_step_seconds=0.01)
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client, args={"suits": 1})
    async with trio_websocket.open_websocket_url(
        ws_url(base, ticket["id"]), subprotocols=["bearer", f"bearer.{ticket['token']}"]
    ) as ws:
        assert ws.subprotocol == "bearer"
        assert json.loads(await ws.get_message())["type"] == "snapshot"
    port = int(base.rsplit(":", 1)[1])
    handshake = await trio.to_thread.run_sync(_raw_handshake, port, ticket)
    assert b"101" in handshake.split(b"\r\n")[0]
    assert b"sec-websocket-extensions" not in handshake.lower()


def _raw_handshake(port: int, ticket: dict[str, Any]) -> bytes:
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    with raw_websocket(port, ticket, extra=offer) as sock:
        return read_head(sock)[0]


@pytest.mark.parametrize(
    ("send", "code"),
    [
        (lambda ws: ws.send_message(b"\x00binary"), 1003),
        (lambda ws: ws.send_message("{not json"), 1007),
        (lambda ws: ws.send_message('["a list"]'), 1007),
        (lambda ws: ws.send_message('{"type": "dance"}'), 1008),
        (lambda ws: ws.send_message("x" * 70_000), 1009),
    ],
)
async def test_websocket_abuse_gets_its_close_code(start_hotel: Any, send: Any, code: int) -> None:
    _, base = await start_hotel(laundry_step_seconds=0.05)
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client, args={"suits": 10})
    normal = Watch()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_into, base, ticket, normal)
        async with trio_websocket.open_websocket_url(
            ws_url(base, ticket["id"]),
            extra_headers=[("Authorization", f"Bearer {ticket['token']}")],
        ) as ws:
            await send(ws)
            frames = await _read_until_closed(ws)
        assert frames.close_code == code
    assert_one_stream(normal.events, "completed")


async def test_a_flood_of_messages_is_closed_1008(start_hotel: Any) -> None:
    _, base = await start_hotel(guest_messages_per_second=5, guest_message_burst=10)
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client, args={"suits": 10})
    async with trio_websocket.open_websocket_url(
        ws_url(base, ticket["id"]), extra_headers=[("Authorization", f"Bearer {ticket['token']}")]
    ) as ws:
        await _flood(ws)
        frames = await _read_until_closed(ws)
    pongs = sum(event.get("type") == "pong" for event in frames.events)
    assert frames.close_code == 1008
    assert 1 <= pongs <= 10


async def _read_until_closed(ws: trio_websocket.WebSocketConnection) -> Watch:
    seen = Watch()
    try:
        while True:
            seen.events.append(json.loads(await ws.get_message()))
    except trio_websocket.ConnectionClosed as closed:
        seen.close_code = closed.reason.code if closed.reason else None
    return seen


async def _flood(ws: trio_websocket.WebSocketConnection) -> None:
    """11 pings at once: one more than the burst of 10 allows.

    It stops there: a client still sending when the server closes gets a TCP
    reset instead of the close frame (the server does not drain its socket).
    """
    for _ in range(11):
        await ws.send_message('{"type": "ping"}')


async def test_invalid_utf8_text_frame_is_refused(start_hotel: Any) -> None:
    the_hotel, base = await start_hotel(laundry_step_seconds=600)
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client)
    port = int(base.rsplit(":", 1)[1])
    normal = Watch()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_into, base, ticket, normal)
        await normal.opened.wait()
        reply = await trio.to_thread.run_sync(_send_invalid_utf8, port, ticket)
        # hypercorn drops the connection without a close frame (clients see 1006):
        # the documented answer; what matters is that it ends, and nothing else does.
        assert reply in (b"", b"closed") or reply[:1] == b"\x88"
        assert normal.close_code is None
        line = the_hotel.lines.lookup(ticket["id"])
        assert line is not None
        await the_hotel.checkout.end(line.notebook, line, tickets.Status.CANCELLED, "test over")
    assert_one_stream(normal.events, "cancelled")


def _send_invalid_utf8(port: int, ticket: dict[str, Any]) -> bytes:
    with raw_websocket(port, ticket) as sock:
        _, received = read_head(sock)
        payload = b"\xff\xfe\xfd"
        mask = b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:
            return b"closed"
        return _close_frame(received)


def _close_frame(stream: bytes) -> bytes:
    """The first close frame (opcode 0x8) in a stream of unmasked server frames."""
    while len(stream) >= 2:
        if stream[0] == 0x88:
            return stream
        stream = stream[2 + _length(stream) :]  # a text frame or a ping: skip it
    return b""


def _length(frame: bytes) -> int:
    size = frame[1] & 0x7F
    if size == 126:
        return 2 + int.from_bytes(frame[2:4], "big")
    return size


async def test_oversized_body_and_args(start_hotel: Any, query: Any) -> None:
    _, base = await start_hotel()
    big = {"service": "laundry", "args": {"suits": 1}, "guest": "g", "pad": "x" * 70_000}
    async with httpx.AsyncClient(base_url=base) as client:
        too_big = await client.post("/tickets", json=big)
        fat_args = await client.post(
            "/tickets",
            json={"service": "laundry", "args": {"suits": 1, "z": "y" * 9000}, "guest": "g"},
        )
    assert too_big.status_code == 413
    assert fat_args.status_code == 422
    assert "bytes" in fat_args.json()["detail"]
    assert query("SELECT count(*) FROM tickets") == [(0,)]


async def test_idle_half_open_connections_are_dropped(start_hotel: Any) -> None:
    """1,000 connections that never finish their request; normal ones are served."""
    _, base = await start_hotel(idle_timeout_seconds=1.0)
    port = int(base.rsplit(":", 1)[1])
    sockets = []
    for index in range(1000):
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", port))
        await sock.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" if index % 2 else b"GET /tick")
        sockets.append(sock)
    async with httpx.AsyncClient(base_url=base) as client:
        for _ in range(20):
            assert (await client.get("/healthz")).status_code == 200
    dropped = 0
    with trio.fail_after(10):
        for sock in sockets:
            try:
                data = await sock.recv(4096)
                dropped += data == b"" or data.startswith(b"HTTP/1.1 4")
            except OSError:
                dropped += 1
            sock.close()
    assert dropped == 1000


async def _watch_into(base: str, ticket: dict[str, Any], result: Watch) -> None:
    await watch(base, ticket["id"], ticket["token"], result=result)


@pytest.mark.parametrize(
    ("limits", "status"),
    [({"max_connections_per_client": 3}, 429), ({"max_connections": 3}, 503)],
)
async def test_connection_limits(start_hotel: Any, limits: dict[str, int], status: int) -> None:
    the_hotel, base = await start_hotel(laundry_step_seconds=600, **limits)
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client)
    auth = [("Authorization", f"Bearer {ticket['token']}")]
    async with (
        trio_websocket.open_websocket_url(ws_url(base, ticket["id"]), extra_headers=auth),
        trio_websocket.open_websocket_url(ws_url(base, ticket["id"]), extra_headers=auth),
        trio_websocket.open_websocket_url(ws_url(base, ticket["id"]), extra_headers=auth),
    ):
        with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
            await watch(base, ticket["id"], ticket["token"])
        async with httpx.AsyncClient(base_url=base) as client:
            refused = await client.get("/healthz")
    assert rejected.value.status_code == status
    assert refused.status_code == status
    assert refused.headers["content-type"] == "application/problem+json"
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/healthz")).status_code == 200  # freed again
    assert the_hotel.doors.refused[status] == 2


async def test_a_peer_that_stops_answering_pings_is_dropped(start_hotel: Any) -> None:
    # The idle timeout also bounds the POST below (hypercorn drops a connection
    # whose client sends nothing for that long, mid-request too): at 0.5 s a
    # fresh database's first INSERT on a busy CI machine once outlasted it.
    _, base = await start_hotel(
        ws_ping_interval_seconds=0.1, idle_timeout_seconds=1.0, laundry_step_seconds=600
    )
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client)
    normal = Watch()
    port = int(base.rsplit(":", 1)[1])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_into, base, ticket, normal)
        silent = await trio.to_thread.run_sync(_silent_peer, port, ticket)
        with trio.fail_after(4):
            assert await trio.to_thread.run_sync(_closed_by_server, silent)
        assert normal.close_code is None  # the live watcher answers pings: still there
        nursery.cancel_scope.cancel()


def _silent_peer(port: int, ticket: dict[str, Any]) -> socket.socket:
    return raw_websocket(port, ticket)


def _closed_by_server(sock: socket.socket) -> bool:
    """Read (never answering a ping) until the server closes; False on a timeout."""
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return True


async def test_one_failing_connection_never_takes_the_server_down(
    start_hotel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception escaping hypercorn for one connection ends that connection only."""
    from hypercorn.trio import tcp_server

    real_read = tcp_server.TCPServer._read_data
    failures: list[int] = []

    async def flaky_read(self: Any) -> None:
        if not failures:
            failures.append(1)
            raise RuntimeError("a bug in the server, for one connection")
        await real_read(self)

    monkeypatch.setattr(tcp_server.TCPServer, "_read_data", flaky_read)
    _, base = await start_hotel()
    async with httpx.AsyncClient(base_url=base) as client:
        with pytest.raises(httpx.TransportError):
            await client.get("/healthz")
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/healthz")).status_code == 200
        ticket = await create(client, args={"suits": 1})
    assert_one_stream((await watch(base, ticket["id"], ticket["token"])).events, "completed")
    assert failures == [1]
