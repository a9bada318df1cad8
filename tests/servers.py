"""Real server processes for tests that kill, stop or signal them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

import helpers

SERVING = re.compile(r"serving on (http://\S+)")


class ServerProcess:
    """``python -m grandhotel serve`` on 127.0.0.1:0, its output in a log file.

    Args:
        database_url: the safe.
        node_name: the node's name (a restart may reuse it).
        log_dir: where the log file goes.
        env: extra ``GRANDHOTEL_*`` settings.
    """

    def __init__(
        self, database_url: str, node_name: str, log_dir: Path, env: dict[str, Any] | None = None
    ) -> None:
        self.database_url = database_url
        self.node_name = node_name
        self.log_dir = log_dir
        self.env = {key: str(value) for key, value in (env or {}).items()}
        self.process: trio.Process | None = None
        self.base_url = ""
        self.starts = 0

    @property
    def log_path(self) -> Path:
        """The current run's log file."""
        return self.log_dir / f"{self.node_name}.{self.starts}.log"

    async def start(self, **env: Any) -> str:
        """Start the server; return its base URL once it serves."""
        self.starts += 1
        environment = dict(os.environ, **self.env, **{k: str(v) for k, v in env.items()})
        environment["PYTHONUNBUFFERED"] = "1"
        command = [
            sys.executable, "-m", "grandhotel", "serve", "--port", "0",
            "--database-url", self.database_url, "--node-name", self.node_name,
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = await trio.lowlevel.open_process(
                command, stdout=log, stderr=subprocess.STDOUT, env=environment
            )
        with trio.fail_after(30):
            while not (match := SERVING.search(self.log_text())):
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited early:\n{self.log_text()}")
                await trio.sleep(0.05)
        self.base_url = match[1]
        return self.base_url

    def log_text(self) -> str:
        """Everything the current run printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send(self, signum: signal.Signals) -> None:
        """Send a signal to the server."""
        if self.process is not None:
            self.process.send_signal(signum)

    async def wait(self, timeout: float = 30) -> int:
        """Wait for the server to exit; return its exit code."""
        if self.process is None:
            raise RuntimeError("not started")
        with trio.fail_after(timeout):
            return await self.process.wait()

    async def kill(self) -> None:
        """SIGKILL the server and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.send(signal.SIGKILL)
            await self.wait()

    async def close(self) -> None:
        """Make sure the process is gone (test teardown); no token in any of its logs."""
        if self.process is not None and self.process.poll() is None:
            self.send(signal.SIGCONT)
            await self.kill()
        for log in self.log_dir.glob(f"{self.node_name}.*.log"):
            text = log.read_text(errors="replace")
            leaked = [token for token in helpers.TOKENS if token in text]
            assert not leaked, f"{len(leaked)} token(s) appear in {log.name}"
