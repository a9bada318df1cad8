"""Zero-setup PostgreSQL for the server: probe libpq's default, or start one.

`libpq_default_answers` tells whether something listens where libpq would
connect with an empty connection string. `embedded_postgres` starts a private
PostgreSQL with the optional `pgserver` package (extra ``embedded``), creates
the ``grandhotel`` database in it and yields its libpq URL.

When run as root, pgserver creates (with ``useradd``) a system user named
``pgserver`` that owns the data directory and runs ``initdb`` and the server,
because ``initdb`` refuses root; to let it in, pgserver adds read and traverse
permission for everyone on every parent directory of the data directory.

This module never imports psycopg (only ``grandhotel.safe`` does).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

DATABASE = "grandhotel"
_DEFAULT_PORT = 5432
if sys.platform == "win32":
    _DEFAULT_HOSTS: tuple[str, ...] = ("localhost",)
else:
    # Unix socket directories, not temporary files: libpq's usual compiled-in defaults.
    _DEFAULT_HOSTS = ("/var/run/postgresql", "/run/postgresql", "/tmp")  # noqa: S108
_CREATE_DB_SCRIPT = r"""\set ON_ERROR_STOP on
SELECT 'CREATE DATABASE grandhotel'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'grandhotel')\gexec
"""


class EmbeddedUnavailable(RuntimeError):
    """The optional `pgserver` package, needed for the embedded server, is missing."""


def default_data_dir() -> Path:
    """Return where the embedded server keeps its data by default.

    Returns:
        ``$XDG_DATA_HOME/grandhotel/pgdata``, or ``~/.local/share/grandhotel/pgdata``.
    """
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "grandhotel" / "pgdata"


def _targets() -> list[tuple[str, int]]:
    """List the (host or socket dir, port) pairs libpq would try, from PGHOST/PGPORT."""
    hosts = (os.environ.get("PGHOSTADDR") or os.environ.get("PGHOST") or "").split(",")
    raw_ports = os.environ.get("PGPORT", "").split(",")
    ports = [int(p) if p.strip() else _DEFAULT_PORT for p in raw_ports]
    if len(ports) == 1:
        ports *= len(hosts)
    targets: list[tuple[str, int]] = []
    for host, port in zip(hosts, ports, strict=False):
        names = (host.strip(),) if host.strip() else _DEFAULT_HOSTS
        targets.extend((name, port) for name in names)
    return targets


def _listens(host: str, port: int, timeout_seconds: float) -> bool:
    """Tell whether a socket connect to ``host`` (a socket dir or a TCP host) succeeds."""
    try:
        if host.startswith("/"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout_seconds)
                sock.connect(f"{host}/.s.PGSQL.{port}")
        else:
            socket.create_connection((host, port), timeout=timeout_seconds).close()
    except OSError:
        return False
    return True


def libpq_default_answers(timeout_seconds: float = 1.0) -> bool:
    """Tell whether a PostgreSQL server seems to answer at libpq's default location.

    PGHOSTADDR, PGHOST and PGPORT (comma lists included) are respected; an empty
    host means the usual unix socket directories. This only checks that something
    accepts a socket connection there: no handshake, authentication or database.

    Args:
        timeout_seconds: Timeout for each connect attempt.

    Returns:
        True when any candidate location accepts a connection.
    """
    try:
        targets = _targets()
    except ValueError:
        logger.warning("PGPORT is not a port number: %r", os.environ.get("PGPORT"))
        return False
    return any(_listens(host, port, timeout_seconds) for host, port in targets)


def _create_database(uri: str, bin_dir: Path) -> None:
    """Create the ``grandhotel`` database through the server at ``uri`` unless it exists."""
    subprocess.run(  # noqa: S603 - fixed argv, no shell; uri comes from pgserver
        [str(bin_dir / "psql"), "-X", "-q", "-d", uri],
        input=_CREATE_DB_SCRIPT,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextmanager
def embedded_postgres(data_dir: Path | None = None) -> Iterator[str]:
    """Run a private PostgreSQL (pgserver) in ``data_dir`` while the context is open.

    Blocking: initdb (first use) and startup take seconds. The server listens on a
    unix socket only, with trust auth for user ``postgres``. On exit it is stopped,
    unless another process still holds a handle on the same data directory.

    Args:
        data_dir: PostgreSQL data directory; `default_data_dir()` when None.

    Yields:
        A libpq URL of the ``grandhotel`` database, created if missing.

    Raises:
        EmbeddedUnavailable: The optional ``pgserver`` package is not installed.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns at pgserver's import when XDG_RUNTIME_DIR is unset or
            # unfit; its fallback directory (for pgserver's lock file) is fine.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
            import pgserver
            from pgserver.postgres_server import get_server
    except ImportError as exc:
        raise EmbeddedUnavailable(
            "the embedded PostgreSQL needs pgserver: pip install 'grandhotel[embedded]',"
            " or set GRANDHOTEL_DATABASE_URL to an existing PostgreSQL"
        ) from exc
    pgdata = (data_dir or default_data_dir()).expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    server = get_server(pgdata, cleanup_mode="stop")
    try:
        _create_database(server.get_uri(), Path(pgserver.__file__).parent / "pginstall" / "bin")
        uri = server.get_uri(DATABASE)
        logger.info("embedded PostgreSQL ready in %.1fs at %s", time.monotonic() - started, uri)
        yield uri
    finally:
        server.cleanup()
        logger.info("embedded PostgreSQL in %s released", pgdata)
