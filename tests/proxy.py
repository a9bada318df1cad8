"""A TCP proxy in front of PostgreSQL that a test can cut, to simulate an outage."""

from __future__ import annotations

import trio


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to ``target``; ``cut`` drops everything, ``restore`` heals.

    While cut, existing connections are closed and new ones are accepted and
    closed at once, as a database that went away looks to a client.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.up = True
        self._scopes: set[trio.CancelScope] = set()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; reports the listening port."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self.up = False
        for scope in list(self._scopes):
            scope.cancel()

    def restore(self) -> None:
        """Accept connections again."""
        self.up = True

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if not self.up:
                return
            with trio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    server = await trio.open_tcp_stream(*self.target)
                    async with server, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
                        nursery.start_soon(self._pump, server, client, nursery.cancel_scope)
                finally:
                    self._scopes.discard(scope)

    @staticmethod
    async def _pump(
        source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()
