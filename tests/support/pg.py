"""A real PostgreSQL for tests: the server binaries that the ``pgserver`` wheel ships.

A fresh machine has no PostgreSQL installed; the wheel brings ``initdb`` and ``postgres``. We
run them ourselves rather than through ``pgserver.get_server``: that one listens on a Unix
socket only and, as root, adds a system user. Here the server listens on a free loopback port
(a plain ``postgres://`` URL for ``DATABASE_URL``), runs as ``nobody`` when the tests run as
root (PostgreSQL refuses root), skips fsync (a test cluster need not survive a power cut) and
is stopped by its pid. One server per test session keeps the cost at about a second.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.embedded import free_port

USER = "chat"  # the database superuser initdb creates (trust auth on loopback only)


def binaries() -> Path:
    """The folder of pgserver's ``postgres`` and ``initdb``; ImportError if not installed."""
    # Found without importing it: its __init__ reaches for a per-user runtime folder.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("no PostgreSQL: pip install pgserver (the dev extra has it)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _as_unprivileged() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_uid, nobody.pw_gid


def _child_setup(ids: tuple[int, int] | None) -> None:
    """In the child, before exec: die with the parent (even by SIGKILL), drop root."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if ids is not None:
        os.setgid(ids[1])
        os.setuid(ids[0])


@dataclass
class PostgresServer:
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes]

    def url(self, database: str = "postgres") -> str:
        return f"postgres://{USER}@127.0.0.1:{self.port}/{database}"

    @classmethod
    def start(cls, *, timeout_s: float = 60.0) -> PostgresServer:
        bin_dir = binaries()
        ids = _as_unprivileged()
        base = Path(tempfile.mkdtemp(prefix="chat-pg-"))
        data_dir = base / "data"
        data_dir.mkdir()
        if ids is not None:
            os.chown(base, *ids)
            os.chown(data_dir, *ids)
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", USER, "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-sync"],
            check=True, capture_output=True, timeout=timeout_s,
            preexec_fn=lambda: _child_setup(ids),
        )  # fmt: skip
        port = free_port()
        log = open(base / "postgres.log", "wb")
        process = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(data_dir), "-p", str(port),
             "-h", "127.0.0.1", "-k", str(base),
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=lambda: _child_setup(ids),
        )  # fmt: skip
        log.close()
        server = cls(port=port, data_dir=data_dir, process=process)
        try:
            server.wait_ready(timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    def wait_ready(self, timeout_s: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}: {self.log()}")
            with contextlib.suppress(OSError, psycopg.OperationalError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            time.sleep(0.05)
        raise RuntimeError(f"postgres on port {self.port} not ready in {timeout_s}s: {self.log()}")

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        path = self.data_dir.parent / "postgres.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # "fast" shutdown: ends open sessions
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)
