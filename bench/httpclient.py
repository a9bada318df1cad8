"""A lean HTTP/1.1 client for load: keep-alive connections over trio sockets.

httpx costs the driver about 1 ms of CPU per request (measured here: 1,042 us
per POST against ~1,100 us of the server's own CPU for the bare route), so on a
2-core machine the driver, not the server, would set the intake rate. This
client writes the request bytes itself and reads ``Content-Length`` (or
chunked) responses: real HTTP/1.1 on real TCP connections, at a few tens of
microseconds per request. ``--http-client httpx`` switches back to httpx.

Both clients answer ``post_json(path, body) -> (status, parsed body or None)``.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import httpx
import trio

MAX_HEAD_BYTES = 64 * 1024


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as expected."""


class _Connection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise ProtocolError("the server closed the connection")
        self.buffer += data

    async def _line_block(self) -> bytes:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise ProtocolError("response head too large")
            await self._fill()
        head = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        return head

    async def _exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            await self._fill()
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    async def _chunked(self) -> bytes:
        body = bytearray()
        while True:
            while (end := self.buffer.find(b"\r\n")) < 0:
                await self._fill()
            size = int(bytes(self.buffer[:end]).split(b";")[0], 16)
            del self.buffer[: end + 2]
            if size == 0:
                await self._exactly(2)
                return bytes(body)
            body += await self._exactly(size)
            await self._exactly(2)

    async def request(self, raw: bytes) -> tuple[int, bytes, bool]:
        """Send one request; return (status, body, keep-alive)."""
        await self.stream.send_all(raw)
        head = await self._line_block()
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ProtocolError(f"bad status line {lines[0]!r}")
        status = int(parts[1])
        length: int | None = None
        chunked = False
        keep_alive = True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif key == b"connection":
                keep_alive = b"close" not in value.lower()
        if chunked:
            body = await self._chunked()
        elif length is not None:
            body = await self._exactly(length)
        else:
            raise ProtocolError("a response without a length")
        return status, body, keep_alive


class RawClient:
    """``connections`` keep-alive HTTP/1.1 connections to one server.

    Args:
        base_url: ``http://host:port``.
        connections: the most connections open at once (requests wait for one).
    """

    def __init__(self, base_url: str, connections: int) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme != "http" or parsed.hostname is None:
            raise ValueError(f"the lean client speaks plain http only: {base_url}")
        self.host = parsed.hostname
        self.port = parsed.port or 80
        self.host_header = parsed.netloc.encode()
        self._idle: list[_Connection] = []
        self._open = 0
        self._limit = trio.Semaphore(connections)

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every idle connection."""
        while self._idle:
            await self._idle.pop().stream.aclose()

    async def post_json(self, path: str, body: Any) -> tuple[int, Any]:
        """POST ``body`` as JSON; (status, the parsed JSON answer or None)."""
        data = json.dumps(body).encode()
        raw = (
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.host_header, len(data), data)
        )
        status, answer = await self._request(raw)
        return status, _json_or_none(answer)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """GET ``path``; (status, the parsed JSON answer or None)."""
        extra = b"".join(
            b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in (headers or {}).items()
        )
        raw = b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path.encode(), self.host_header, extra)
        status, answer = await self._request(raw)
        return status, _json_or_none(answer)

    async def _request(self, raw: bytes) -> tuple[int, bytes]:
        async with self._limit:
            connection = self._idle.pop() if self._idle else None
            reused = connection is not None
            if connection is None:
                connection = _Connection(await trio.open_tcp_stream(self.host, self.port))
            try:
                status, answer, keep_alive = await connection.request(raw)
            except (ProtocolError, trio.BrokenResourceError, OSError):
                await trio.aclose_forcefully(connection.stream)
                if not reused:
                    raise
                # The server closed a keep-alive connection while it sat idle (its
                # keep-alive timeout): send again on a new one, as any client does.
                connection = _Connection(await trio.open_tcp_stream(self.host, self.port))
                try:
                    status, answer, keep_alive = await connection.request(raw)
                except BaseException:
                    await trio.aclose_forcefully(connection.stream)
                    raise
            except BaseException:
                await trio.aclose_forcefully(connection.stream)
                raise
            if keep_alive:
                self._idle.append(connection)
            else:
                await connection.stream.aclose()
            return status, answer


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


class HttpxClient:
    """The same interface over ``httpx.AsyncClient``."""

    def __init__(self, base_url: str, connections: int, timeout: float = 60.0) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    async def __aenter__(self) -> HttpxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def post_json(self, path: str, body: Any) -> tuple[int, Any]:
        """POST ``body`` as JSON; (status, the parsed JSON answer or None)."""
        response = await self.client.post(path, json=body)
        return response.status_code, _json_or_none(response.content)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """GET ``path``; (status, the parsed JSON answer or None)."""
        response = await self.client.get(path, headers=headers)
        return response.status_code, _json_or_none(response.content)


Client = RawClient | HttpxClient
TRANSPORT_ERRORS = (OSError, ProtocolError, trio.BrokenResourceError, httpx.TransportError)


def make(kind: str, base_url: str, connections: int) -> Client:
    """``raw`` (default) or ``httpx``."""
    if kind == "httpx":
        return HttpxClient(base_url, connections)
    return RawClient(base_url, connections)
