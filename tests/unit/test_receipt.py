"""The bench driver's receipts: the kernel's receive time of a frame's bytes."""

from __future__ import annotations

import time

import trio
import trio.testing
from bench import receipt


async def connected_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return client, server


async def test_a_read_notes_when_its_bytes_arrived_not_when_it_was_read() -> None:
    client, server = await connected_pair()
    stamped = receipt.StampedStream(client)
    assert stamped.stamping
    # Linux turns receive stamps on for the whole system a moment after the
    # first socket asks (deferred work): until then a read has no stamp.
    for _ in range(1000):
        await server.send_all(b".")
        assert await stamped.receive_some() == b"."
        if stamped.received_at:
            break
        await trio.sleep(0.001)  # the kernel's worker, not trio's clock
    assert stamped.received_at > 0
    sent = time.time()
    await server.send_all(b"frame one")
    await trio.testing.wait_all_tasks_blocked()
    arrived_before = time.time()
    data = await stamped.receive_some()
    read = time.time()
    assert data == b"frame one"
    assert sent <= stamped.received_at <= arrived_before  # the kernel's stamp, before the read
    assert receipt.receipt(stamped, read) == stamped.received_at
    await server.send_all(b"frame two")
    first = stamped.received_at
    assert await stamped.receive_some() == b"frame two"
    assert stamped.received_at >= first  # each read notes its own bytes
    await stamped.aclose()
    await server.aclose()


def test_a_frame_without_a_stamp_is_received_when_read() -> None:
    assert receipt.receipt(None, 12.5) == 12.5


async def test_a_closed_peer_ends_the_stream_as_trio_does() -> None:
    client, server = await connected_pair()
    stamped = receipt.StampedStream(client)
    await server.aclose()
    assert await stamped.receive_some() == b""  # end of stream
    await stamped.aclose()
