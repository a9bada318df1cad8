"""Tests for grandhotel.embedded: the libpq default probe and the pgserver-backed server."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import psycopg
import pytest

from grandhotel import embedded

_PG_ENV = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGSERVICE", "PGDATABASE", "PGUSER")


@pytest.fixture
def clean_pg_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _PG_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_closed_tcp_port_does_not_answer(clean_pg_env: pytest.MonkeyPatch) -> None:
    clean_pg_env.setenv("PGHOST", "127.0.0.1")
    clean_pg_env.setenv("PGPORT", str(_closed_port()))
    assert embedded.libpq_default_answers(timeout_seconds=0.5) is False


def test_missing_socket_does_not_answer(clean_pg_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_pg_env.setenv("PGHOST", str(tmp_path))
    clean_pg_env.setenv("PGPORT", "5432")
    assert embedded.libpq_default_answers(timeout_seconds=0.5) is False


def test_bad_pgport_does_not_answer(clean_pg_env: pytest.MonkeyPatch) -> None:
    clean_pg_env.setenv("PGPORT", "not-a-port")
    assert embedded.libpq_default_answers() is False


def test_running_server_answers(clean_pg_env: pytest.MonkeyPatch) -> None:
    clean_pg_env.setenv("PGHOST", "127.0.0.1")
    clean_pg_env.setenv("PGPORT", "5432")
    assert embedded.libpq_default_answers() is True


def test_host_list_answers_if_any_listens(clean_pg_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_pg_env.setenv("PGHOST", f"{tmp_path},127.0.0.1")
    clean_pg_env.setenv("PGPORT", "5432")
    assert embedded.libpq_default_answers() is True


def test_default_data_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert embedded.default_data_dir() == tmp_path / "grandhotel" / "pgdata"


def test_missing_pgserver_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pgserver", None)
    with (
        pytest.raises(embedded.EmbeddedUnavailable, match=r"grandhotel\[embedded\]"),
        embedded.embedded_postgres(tmp_path / "pgdata"),
    ):
        pass


@pytest.mark.slow
def test_embedded_server_runs_select_1(tmp_path: Path) -> None:
    if importlib.util.find_spec("pgserver") is None:
        pytest.skip("pgserver (extra 'embedded') is not installed")
    with embedded.embedded_postgres(tmp_path / "pgdata") as url:
        with psycopg.connect(url, connect_timeout=10) as conn:
            row = conn.execute("SELECT current_database(), 1").fetchone()
        assert row == ("grandhotel", 1)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()
