"""The ``grandhotel`` command's failures: one line, a distinct exit code, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import trio


async def serve(*args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    """``grandhotel serve`` with ``args`` (after ``--port 0``) and ``env``, run to its end."""
    return await trio.run_process(
        [sys.executable, "-m", "grandhotel", "serve", "--port", "0", *args],
        capture_stdout=True, capture_stderr=True, check=False, env={**os.environ, **env},
    )  # fmt: skip


async def test_a_port_already_taken_exits_4(database_url: str) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        done = await serve("--port", str(port), "--database-url", database_url)
    finally:
        taken.close()
    error = done.stderr.decode()
    assert done.returncode == 4
    assert f"grandhotel: cannot listen on 127.0.0.1:{port}: Address already in use\n" in error
    assert "Traceback" not in error


async def test_a_bad_setting_exits_2_naming_it() -> None:
    done = await serve(GRANDHOTEL_POOL_SIZE="0")
    assert done.returncode == 2
    assert done.stderr.decode() == "grandhotel: pool_size must be at least 1\n"


async def test_a_database_that_does_not_answer_exits_3() -> None:
    done = await serve("--database-url", "host=127.0.0.1 port=1 dbname=nowhere user=postgres")
    error = done.stderr.decode()
    assert done.returncode == 3
    assert error.startswith("grandhotel: cannot reach the database: ")
    assert "Traceback" not in error
