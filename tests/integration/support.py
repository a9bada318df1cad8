"""Small helpers shared by the integration tests."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import trio


async def wait_until(condition: Callable[[], bool], *, seconds: float, poll: float = 0.01) -> None:
    """Poll ``condition`` until it holds; ``trio.TooSlowError`` after ``seconds``."""
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(poll)


class Link:
    """One relayed connection. Each direction moves bytes only while its event is set."""

    def __init__(self) -> None:
        self.upstream = trio.Event()  # client -> server
        self.downstream = trio.Event()  # server -> client
        self.release()
        self.upstream_bytes = 0
        """Bytes the client has sent (so a test can see a request leave)."""

    def hold_downstream(self) -> None:
        """Keep what the server sends in the relay until ``release``."""
        self.downstream = trio.Event()

    def freeze(self) -> None:
        """Stall both directions until ``release``."""
        self.upstream = trio.Event()
        self.downstream = trio.Event()

    def release(self) -> None:
        """Let bytes flow again, both ways."""
        self.upstream.set()
        self.downstream.set()


class Relay:
    """Relays TCP connections to the PostgreSQL server; ``freeze`` stalls open ones.

    A frozen link neither forwards nor closes: the client's writes pile up in
    kernel buffers and its reads never return, as with a peer that vanished.
    Links opened after ``freeze`` flow normally.
    """

    def __init__(self, server_url: str) -> None:
        params = psycopg.conninfo.conninfo_to_dict(server_url)
        self.target_host = str(params.get("host") or "127.0.0.1")
        self.target_port = int(params.get("port") or 5432)
        self.port = 0
        self.links: list[Link] = []

    def url(self, database_url: str) -> str:
        """``database_url``, reached through this relay."""
        return psycopg.conninfo.make_conninfo(database_url, host="127.0.0.1", port=str(self.port))

    def freeze(self) -> None:
        """Stall every link open now, in both directions (later links flow)."""
        for link in self.links:
            link.freeze()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._relay, listeners)

    async def _open_target(self) -> trio.abc.Stream:
        if self.target_host.startswith("/"):
            return await trio.open_unix_socket(f"{self.target_host}/.s.PGSQL.{self.target_port}")
        return await trio.open_tcp_stream(self.target_host, self.target_port)

    async def _relay(self, client: trio.SocketStream) -> None:
        link = Link()
        self.links.append(link)
        server = await self._open_target()
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, link, client, server, True)
            nursery.start_soon(self._pump, link, server, client, False)

    @staticmethod
    async def _pump(
        link: Link, source: trio.abc.Stream, sink: trio.abc.Stream, upstream: bool
    ) -> None:
        def flowing() -> trio.Event:
            return link.upstream if upstream else link.downstream

        try:
            while True:
                await flowing().wait()
                data = await source.receive_some(65536)
                await flowing().wait()
                if not data:
                    await sink.aclose()  # ends the other direction's pump too
                    return
                if upstream:
                    link.upstream_bytes += len(data)
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
