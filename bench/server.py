"""The server under test: a fresh database and a ``grandhotel serve`` subprocess.

``fresh_database`` creates ``grandhotel_bench_<timestamp>`` through an admin
connection and drops it (``WITH (FORCE)``) afterwards. ``Server`` starts
``python -m grandhotel serve --port 0`` against it, with the settings a
scenario asks for, and reads the bound address from its "serving on" line.
``Target`` is what a scenario drives: either that server, or one already running
(``--url``), whose pid and database the caller may name for the measurements
that need them.

``proc_cpu_seconds`` and ``proc_rss_bytes`` read ``/proc/<pid>`` (Linux).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import trio

SERVING = re.compile(r"serving on (http://\S+)")
DEFAULT_ADMIN_URL = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
REPO_ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def default_admin_url() -> str:
    """``GRANDHOTEL_BENCH_ADMIN_URL``, else the tests' server, else the local one."""
    return os.environ.get(
        "GRANDHOTEL_BENCH_ADMIN_URL",
        os.environ.get("GRANDHOTEL_TEST_DATABASE_URL", DEFAULT_ADMIN_URL),
    )


def url_for(admin_url: str, dbname: str) -> str:
    """The admin URL pointed at another database."""
    return psycopg.conninfo.make_conninfo(admin_url, dbname=dbname)


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """Create an empty database for one run; yield its URL; drop it after."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d_%H%M%S_%f")
    name = f"grandhotel_bench_{stamp}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield url_for(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def postgres_version(url: str) -> str:
    """``SELECT version()`` of the server at ``url`` ('' if it does not answer)."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute(b"SELECT version()").fetchone()
    except psycopg.Error:
        return ""
    return str(row[0]) if row else ""


def query(url: str, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Run one read-only query (after a run, never during the measurements)."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def backend_pids(url: str, *, auxiliary: bool = False) -> list[int]:
    """PostgreSQL backends connected to ``url``'s database (for their CPU time).

    With ``auxiliary``, PostgreSQL's own background processes too (WAL writer,
    checkpointer ...); they serve every database of the cluster. Empty when the
    database does not answer.
    """
    where = (
        "(datname = current_database() OR datname IS NULL)"
        if auxiliary
        else ("datname = current_database()")
    )
    try:
        sql = f"SELECT pid FROM pg_stat_activity WHERE {where} AND pid <> pg_backend_pid()"  # noqa: S608 - constant text
        rows = query(url, sql)
    except psycopg.Error:
        return []
    return [int(pid) for (pid,) in rows]


def cpu_of(pids: list[int]) -> float:
    """CPU seconds of several processes."""
    return sum(proc_cpu_seconds(pid) for pid in pids)


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE towards ``wanted`` (children inherit it); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
        return wanted
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0.0 if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_wakeups(pid: int) -> int:
    """Times a process's threads gave up the CPU to wait (voluntary context
    switches), so far: each is a sleep and a wake-up (0 if it is gone)."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # a thread that ended meanwhile
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def proc_rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS), in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores, /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def self_rss_bytes() -> int:
    """This process's resident set size, from /proc/self/statm."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE_BYTES


def children_pids(pid: int) -> list[int]:
    """Direct children of a process (for a worker's pool processes)."""
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        found: list[int] = []
        for task in tasks:
            text = (task / "children").read_text().split()
            found.extend(int(child) for child in text)
    except OSError:
        return []
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live descendants."""
    total = proc_cpu_seconds(pid)
    for child in children_pids(pid):
        total += tree_cpu_seconds(child)
    return total


@dataclasses.dataclass
class Target:
    """What a scenario drives: a base URL, and what can be measured about it."""

    base_url: str
    pid: int | None = None
    """The server's pid, when known (CPU and RSS come from /proc/<pid>)."""
    database_url: str = ""
    """The server's database, when known (pickup latency, backends' CPU)."""
    operator_token: str = ""
    log_path: Path | None = None
    started_here: bool = False
    process: trio.Process | None = None
    death: str = ""
    """Set when the server started here exited during the run: how, and its last error."""

    def check_alive(self) -> bool:
        """False (and ``death`` set) once a server started here has exited."""
        if self.process is None or self.process.poll() is None:
            return True
        if not self.death:
            last = ""
            if self.log_path is not None and self.log_path.exists():
                lines = self.log_path.read_text(errors="replace").splitlines()
                errors = [line.strip() for line in lines if "Error" in line or "error" in line]
                last = errors[-1] if errors else (lines[-1] if lines else "")
            self.death = f"the server exited with code {self.process.returncode}: {last}"
        return False

    @property
    def ws_base(self) -> str:
        """``ws://host:port``."""
        return self.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)


class Server:
    """``python -m grandhotel serve`` on 127.0.0.1:0, its output in a log file.

    Args:
        database_url: the safe.
        log_path: where the server's output goes.
        env: ``GRANDHOTEL_*`` settings (and anything else) for the server.
    """

    def __init__(self, database_url: str, log_path: Path, env: Mapping[str, Any]) -> None:
        self.database_url = database_url
        self.log_path = log_path
        self.env = {key: str(value) for key, value in env.items()}
        self.process: trio.Process | None = None
        self.base_url = ""

    @property
    def pid(self) -> int:
        """The server's pid."""
        if self.process is None:
            raise RuntimeError("not started")
        return self.process.pid

    def command(self) -> list[str]:
        """The command line that starts the server.

        Two experiments, not settings of grandhotel, to measure what a proposed
        change to it would buy without editing it: ``BENCH_SERVER_GC=a,b,c``
        starts it through a wrapper that calls ``gc.freeze()`` after the imports
        and ``gc.set_threshold(a, b, c)``; ``BENCH_SERVER_PRELUDE=file.py`` runs
        that file first (a monkeypatch, say).
        """
        args = [
            "serve", "--port", "0", "--database-url", self.database_url, "--node-name", "bench",
            "--log-level", os.environ.get("BENCH_SERVER_LOG_LEVEL", "WARNING"),
        ]  # fmt: skip
        tuning = os.environ.get("BENCH_SERVER_GC", "")
        prelude_file = os.environ.get("BENCH_SERVER_PRELUDE", "")
        if not tuning and not prelude_file:
            return [sys.executable, "-m", "grandhotel", *args]
        prelude = "import gc, sys; from grandhotel import cli; "
        if prelude_file:
            prelude += (
                f"exec(compile(open({prelude_file!r}).read(), {prelude_file!r}, 'exec'), "
                f"{{'__file__': {prelude_file!r}, '__name__': 'bench_prelude'}}); "
            )
        if tuning:
            thresholds = ", ".join(str(int(v)) for v in tuning.split(","))
            prelude += f"gc.collect(); gc.freeze(); gc.set_threshold({thresholds}); "
        prelude += "sys.exit(cli.main(sys.argv[1:]))"
        return [sys.executable, "-c", prelude, *args]

    async def start(self, wait_seconds: float = 60.0) -> str:
        """Start the server; return its base URL once it serves."""
        environment = dict(os.environ, **self.env)
        environment["PYTHONUNBUFFERED"] = "1"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = await trio.lowlevel.open_process(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=environment
            )
        with trio.fail_after(wait_seconds):
            while not (match := SERVING.search(self.log_text())):
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited early:\n{self.log_text()[-4000:]}")
                await trio.sleep(0.05)
        self.base_url = match[1]
        return self.base_url

    def log_text(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def stop(self, grace_seconds: float = 3.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL after ``grace_seconds``; the exit code.

        The timeout is short: hypercorn keeps each closed WebSocket's ping task
        for up to ``ws_ping_interval_seconds``, and a graceful stop waits for them.
        """
        process = self.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(grace_seconds):
            return await process.wait()
        process.kill()
        return await process.wait()


BENCH_DEFAULTS: Mapping[str, Any] = {
    # Every driver connection comes from 127.0.0.1: the per-client limit would
    # refuse the 1,001st watcher. The hotel-wide limit must hold N watchers too.
    "GRANDHOTEL_MAX_CONNECTIONS": 60_000,
    "GRANDHOTEL_MAX_CONNECTIONS_PER_CLIENT": 60_000,
}


def py_spy() -> str | None:
    """The py-spy executable (beside this Python, or on PATH)."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.asynccontextmanager
async def profiled(pid: int, out: Path) -> AsyncIterator[Path | None]:
    """Sample ``pid`` with py-spy (raw collapsed stacks to ``out``) while inside."""
    executable = py_spy()
    if executable is None:
        print("bench: py-spy is not installed; no profile", file=sys.stderr)
        yield None
        return
    command = [executable, "record", "--pid", str(pid), "--format", "raw", "--rate", "100",
               "--output", str(out)]  # fmt: skip
    with out.with_suffix(".py-spy.log").open("wb") as log:
        process = await trio.lowlevel.open_process(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        await trio.sleep(0.5)
        yield out
    finally:
        with trio.CancelScope(shield=True):
            process.send_signal(signal.SIGINT)
            with trio.move_on_after(30):
                await process.wait()
            if process.poll() is None:
                process.kill()
            _write_summary(out)


def _write_summary(raw: Path) -> None:
    if raw.exists():
        top = raw.with_suffix(".top.txt")
        top.write_text(summarise_profile(raw))
        print(f"bench: server profile in {raw} and {top}", file=sys.stderr)


_LINE = re.compile(r":\d+\)$")


def summarise_profile(raw: Path, top: int = 40) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks.

    Frames are merged per function (line numbers dropped); "self" is where the
    sample was taken (C calls count for the Python function that made them).
    """
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_LINE.sub(")", f) for f in stack.split(";") if f]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "self %  function (file)"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * count / total:6.2f}  {frame}")
    lines += ["", "inclusive %  function (file)"]
    for frame, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[: top * 3]:
        lines.append(f"{100 * count / total:6.2f}  {frame}")
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def pair_for(options: Any, env: Mapping[str, Any]) -> AsyncIterator[tuple[Target, Target]]:
    """Two servers started alike, each on a fresh database, for a pair's two sides
    at the same time; the second logs beside the first (``-2.log``)."""
    second_log = options.log_path.with_name(options.log_path.stem + "-2.log")
    async with (
        target_for(options, env) as first,
        target(
            url=None, admin_url=options.admin_url, env=env, profile=options.profile,
            log_path=second_log,
        ) as second,
    ):  # fmt: skip
        yield first, second


def target_for(
    options: Any, env: Mapping[str, Any]
) -> contextlib.AbstractAsyncContextManager[Target]:
    """``target`` with the options every scenario shares (``--url``, ``--admin-url``, ...)."""
    return target(
        url=options.url,
        admin_url=options.admin_url,
        log_path=options.log_path,
        env=env,
        server_pid=options.server_pid,
        database_url=options.database_url,
        operator_token=options.operator_token,
        profile=options.profile,
    )


@contextlib.asynccontextmanager
async def target(
    *,
    url: str | None,
    admin_url: str,
    log_path: Path,
    env: Mapping[str, Any],
    server_pid: int | None = None,
    database_url: str = "",
    operator_token: str = "",
    profile: bool = False,
) -> AsyncIterator[Target]:
    """The server to drive: ``url`` as it is, or a new one on a fresh database.

    With ``profile``, py-spy samples the server (or ``server_pid``) throughout.
    """
    profile_path = log_path.with_suffix(".profile.txt")
    if url:
        found = Target(url.rstrip("/"), server_pid, database_url, operator_token)
        if profile and server_pid:
            async with profiled(server_pid, profile_path):
                yield found
        else:
            yield found
        return
    with fresh_database(admin_url) as db_url:
        server = Server(db_url, log_path, {**BENCH_DEFAULTS, **env})
        try:
            base = await server.start()
            token = str(env.get("GRANDHOTEL_OPERATOR_TOKEN", operator_token))
            found = Target(
                base, server.pid, db_url, token, log_path, started_here=True, process=server.process
            )
            if profile:
                async with profiled(server.pid, profile_path):
                    yield found
            else:
                yield found
        finally:
            with trio.CancelScope(shield=True):
                await server.stop()


def run_child(
    module: str, *args: str, timeout: float = 600, wrapper: Sequence[str] = ()
) -> dict[str, Any]:
    """Run ``python -m <module> <args>`` in a fresh interpreter (so that no
    measurement reuses memory or caches another left) and return the JSON object
    its last line of output printed. ``wrapper`` goes before the interpreter
    (a ``valgrind`` command line, say).

    Raises:
        RuntimeError: the child failed (its stderr's end is in the message).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run(
        [*wrapper, sys.executable, "-m", module, *args],
        capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured
