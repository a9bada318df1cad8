"""The doorman takes waiting connections in bounded batches, one batch per pass."""

from __future__ import annotations

import collections
import functools
import socket

import pytest
import trio
import trio.testing

from grandhotel import doorman, pace


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock


async def test_waiting_connections_are_taken_in_batches_of_at_most_accept_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sock = listening()
    clients = [socket.create_connection(sock.getsockname()) for _ in range(12)]
    wakeups = 0
    taken: list[int] = []  # the wake-up during which each connection was taken
    admitted: list[socket.socket] = []
    wait_readable = trio.lowlevel.wait_readable

    async def counted_wait(fd: socket.socket) -> None:
        nonlocal wakeups
        await wait_readable(fd)
        wakeups += 1

    monkeypatch.setattr(trio.lowlevel, "wait_readable", counted_wait)

    def admit(conn: socket.socket) -> None:
        taken.append(wakeups)
        admitted.append(conn)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(doorman._take, sock, admit, 5, None)
            with trio.fail_after(5):
                while len(admitted) < 12:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert sorted(collections.Counter(taken).values(), reverse=True) == [5, 5, 2]
        assert all(not conn.getblocking() for conn in admitted)
        assert admitted[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        for conn in [*clients, *admitted, sock]:
            conn.close()


async def test_a_lone_connection_is_taken_at_once_and_nothing_waits_on_an_empty_door() -> None:
    sock = listening()
    admitted: list[socket.socket] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(doorman._take, sock, admitted.append, 32, None)
            await trio.testing.wait_all_tasks_blocked()
            assert admitted == []  # parked on the socket, not spinning
            client = socket.create_connection(sock.getsockname())
            with trio.fail_after(5):
                while not admitted:
                    await trio.sleep(0.01)
            assert len(admitted) == 1
            nursery.cancel_scope.cancel()
        client.close()
    finally:
        for conn in [*admitted, sock]:
            conn.close()


async def test_a_paced_door_takes_each_connection_in_its_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sock = listening()
    clients = [socket.create_connection(sock.getsockname()) for _ in range(4)]
    # The policy off (target 0) and the rate set by hand: two connections a second.
    door = pace.Pace(target_lag=0.0, min_rate=1.0, recovery=0.0, backoff=0.5, cooldown=0.5)
    door.rate = 2.0
    turns = pace.Turns(door)
    taken: list[float] = []
    admitted: list[socket.socket] = []

    def admit(conn: socket.socket) -> None:
        taken.append(trio.current_time())
        admitted.append(conn)

    try:
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            await nursery.start(
                functools.partial(pace.metronome, [turns], tick_seconds=0.05, watched=lambda: True)
            )
            nursery.start_soon(doorman._take, sock, admit, 32, turns.take)
            while len(admitted) < 4:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert [at - start for at in taken] == pytest.approx([0.0, 0.5, 1.0, 1.5], abs=0.051)
    finally:
        for conn in [*clients, *admitted, sock]:
            conn.close()
