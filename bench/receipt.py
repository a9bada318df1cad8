"""When a watcher received a frame: the kernel's receive time of its bytes.

The driver hosts every watcher of a run in one process (up to 10,000 on one
core), so the moment its Python code reads a frame includes its own queueing:
a burst of frames from the server is read one watcher after the other, and a
frame near the end of the burst is read milliseconds after it arrived. A real
watcher is a device of its own and reads at once. So a frame's receipt is the
time its bytes reached the watcher's socket: the kernel stamps every packet it
receives (``SO_TIMESTAMPNS``) and hands the stamp of the newest data over with
``recvmsg``. The driver's own delay (its read minus the receipt) is kept as
well (``Tally.read_delays_ms``), so the read-time figure of earlier rounds can
be given beside it.

``stamp`` puts a ``StampedStream`` under a trio-websocket connection once it
is open (trio-websocket 0.12 reads and writes through ``_stream``). A frame that
came in the read already waiting when the stream was swapped has no stamp: its
receipt is the read time. Several frames in one read share its stamp; one
read taking frames that came in two packets gets the newer packet's stamp, so
a receipt is never earlier than the bytes were there.
"""

from __future__ import annotations

import socket
import struct

import trio
import trio_websocket

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Linux's option (and the control message type it delivers)."""
ANCILLARY_BYTES = socket.CMSG_SPACE(16)
"""One ``struct timespec``."""
RECEIVE_BYTES = 65536


class StampedStream(trio.abc.HalfCloseableStream):
    """A TCP stream whose reads note the kernel's receive time of their bytes.

    Args:
        inner: the connection's own stream (a ``trio.SocketStream``).
    """

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.received_at = 0.0
        """Wall clock (epoch seconds) when the bytes of the last read arrived; 0: unknown."""
        self.stamping = True
        try:
            inner.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            self.stamping = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The next bytes, noting when the kernel received them."""
        if not self.stamping:
            return await self.inner.receive_some(max_bytes)
        try:
            data, ancillary, _flags, _address = await self.inner.socket.recvmsg(
                max_bytes or RECEIVE_BYTES, ANCILLARY_BYTES
            )
        except trio.ClosedResourceError:
            raise
        except OSError as ex:
            raise trio.BrokenResourceError(f"receive failed: {ex}") from ex
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                seconds, nanoseconds = struct.unpack_from("qq", raw)
                if seconds:
                    self.received_at = seconds + nanoseconds / 1e9
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write to the inner stream."""
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        """As the inner stream."""
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """As the inner stream."""
        await self.inner.send_eof()

    async def aclose(self) -> None:
        """Close the inner stream."""
        await self.inner.aclose()


def stamp(ws: trio_websocket.WebSocketConnection) -> StampedStream | None:
    """Stamp ``ws``'s reads from now on; None when its stream is not a plain socket."""
    inner = getattr(ws, "_stream", None)
    if not isinstance(inner, trio.SocketStream):
        return None
    stamped = StampedStream(inner)
    ws._stream = stamped
    return stamped


def receipt(stamped: StampedStream | None, read: float) -> float:
    """A frame's receipt: its bytes' arrival when known, else the read time."""
    if stamped is None or not 0.0 < stamped.received_at <= read:
        return read
    return stamped.received_at
