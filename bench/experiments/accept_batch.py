"""Experiment (BENCH_SERVER_PRELUDE): trio's ``serve_listeners`` accepts one
connection per pass of the scheduler (each ``accept`` yields once). When the
hotel's run queue is long (thousands of laundry steps, butlers and concierges),
a pass takes milliseconds and new connections (every WebSocket watcher) wait in
the listen backlog for seconds. This patch drains the backlog on each wake-up:
after one accept, it takes every connection already waiting, without yielding.
"""

import errno
import socket

import trio
from trio import _highlevel_serve_listeners as serve_listeners


async def _serve_one_listener(listener, handler_nursery, handler):  # type: ignore[no-untyped-def]
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in serve_listeners.ACCEPT_CAPACITY_ERRNOS:
                    await trio.sleep(serve_listeners.SLEEP_TIME)
                    continue
                raise
            handler_nursery.start_soon(serve_listeners._run_handler, stream, handler)
            raw = getattr(getattr(listener, "socket", None), "_sock", None)
            while raw is not None:
                try:
                    sock, _ = raw.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                        continue
                    break
                sock.setblocking(False)
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                accepted = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                handler_nursery.start_soon(serve_listeners._run_handler, accepted, handler)


serve_listeners._serve_one_listener = _serve_one_listener
