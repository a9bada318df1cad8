"""The doorman: takes connections off the listen backlog and hands them to hypercorn.

Theory of operation
-------------------
hypercorn's own ``serve`` accepts through ``trio.serve_listeners``, which
takes one connection per pass of the scheduler: each ``accept`` yields. With
thousands of butlers, laundry steps and guests runnable, a pass takes
milliseconds, so a crowd of new WebSockets waits in the kernel's backlog for
seconds (the watch benchmark measured a first frame p50 of 6.2 s at 10,000
watchers). The doorman waits for the listening socket to be readable, then
takes up to ``accept_batch`` waiting connections without yielding and starts
hypercorn's per-connection server for each. The batch is bounded so that a
crowd at the door is let in over a few passes, not in one pass that would
stall every live guest's next frame. The default is 1 (trio's own pace). With
8 or 32, an in-process test (500 WebSocket clients and the hotel sharing one
trio loop on 2 cores, beside a chatty ticket, with a 3 s idle timeout) saw
clients time out in their handshake: the likely cause is that connections
taken sooner waited longer for their busy clients' first bytes than the idle
timeout allows, and were dropped as half-open. Separate client processes send
at once, so a larger batch is an operator's choice (``GRANDHOTEL_ACCEPT_BATCH``)
for crowds arriving faster than one connection per pass, not a default.

While guests watch and the loop runs late, the door is paced like the desk
(pace.py): a crowd of new connections (every watcher reconnecting after a
restart, say) waits in the backlog instead of stalling the frames of the guests
already in. Each handshake costs ~2 ms of the loop; 2,000 at once held frames
back by up to 1.8 s in the watch benchmark.

Everything else is hypercorn's, as in ``hypercorn.trio.serve`` (0.17-0.18):
the ASGI lifespan, one ``TCPServer`` per connection, and on shutdown the
listeners closed first, idle keep-alive connections told to close, and the
rest given ``graceful_timeout`` before they are cancelled. Plain TCP only: TLS
belongs to the proxy in front of the hotel (docs/discussion/security.md).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import hypercorn.config
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import LifespanState
from hypercorn.utils import repr_socket_addr

logger = logging.getLogger(__name__)

OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
"""accept() errors that mean "the process is full": wait and try again."""
RESOURCES_PAUSE_SECONDS = 0.1


class CannotListen(Exception):
    """The hotel cannot listen on its address (taken, not this machine's, not allowed)."""


GONE_BEFORE_ACCEPT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
"""accept() errors about one connection that left before it was taken: skip it."""


async def serve(
    app: Any,
    hc: hypercorn.config.Config,
    *,
    accept_batch: int,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    turn: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``hc.bind`` until ``shutdown_trigger`` returns.

    ``task_status.started`` gets the bound addresses (``http://host:port``).
    ``turn``, if given, is awaited for each connection taken, before hypercorn
    gets it (the door's pace: pace.py).
    """
    wrapped = ASGIWrapper(app)
    state: LifespanState = {}
    lifespan = Lifespan(wrapped, hc, state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        shared = state.copy()  # what the lifespan put there, as hypercorn hands it on
        try:
            sockets = hc.create_sockets().insecure_sockets
        except OSError as ex:
            where = ", ".join(hc.bind)
            raise CannotListen(f"cannot listen on {where}: {ex.strerror or ex}") from ex
        binds = []
        for sock in sockets:
            sock.listen(hc.backlog)
            sock.setblocking(False)
            binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
        try:
            async with trio.open_nursery() as guests:

                def admit(conn: socket.socket) -> None:
                    stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
                    server = TCPServer(wrapped, hc, context, shared, stream)  # type: ignore[arg-type]
                    guests.start_soon(server.run)  # (hypercorn types it SSLStream; plain works)

                async with trio.open_nursery() as doors:
                    for sock in sockets:
                        doors.start_soon(_take, sock, admit, accept_batch, turn)
                    task_status.started(binds)
                    await shutdown_trigger()
                    doors.cancel_scope.cancel()
                for sock in sockets:
                    sock.close()
                await context.terminated.set()
                guests.cancel_scope.deadline = trio.current_time() + hc.graceful_timeout
        finally:
            for sock in sockets:
                sock.close()
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


async def _take(
    sock: socket.socket,
    admit: Callable[[socket.socket], None],
    batch: int,
    turn: Callable[[], Awaitable[None]] | None,
) -> None:
    """Accept from ``sock`` forever: up to ``batch`` waiting connections per wake-up."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        for _ in range(batch):
            try:
                conn, _address = sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in GONE_BEFORE_ACCEPT:
                    continue
                if exc.errno in OUT_OF_RESOURCES:
                    logger.error(
                        "accept failed: %s; pausing %gs (raise the open files limit?)",
                        os.strerror(exc.errno), RESOURCES_PAUSE_SECONDS,
                    )  # fmt: skip
                    await trio.sleep(RESOURCES_PAUSE_SECONDS)
                    break
                raise
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if turn is not None:
                # Its turn only once there is a connection (a turn taken for an
                # empty backlog would count as an admission and delay the next).
                try:
                    await turn()
                except BaseException:
                    conn.close()
                    raise
            admit(conn)
