"""Real ``runnode`` processes on loopback, for multi-process scenarios."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]


def manage(*args: str, env: dict[str, str], timeout: float = 60) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def ensure_static_files(env: dict[str, str]) -> None:
    """Production settings (DEBUG off) need collected static files: collect them into the env's
    CHAT_STATIC_ROOT (the default ./staticfiles outside pytest, e.g. for the benchmarks) unless
    they are there already. pytest collects once per session (tests/support/static_plugin.py)."""
    if env.get("DJANGO_DEBUG", "").lower() in ("1", "true", "yes", "on"):
        return  # DEBUG serves chatsite/static as it is
    root = Path(env.get("CHAT_STATIC_ROOT") or ROOT / "staticfiles")
    if not (root / "staticfiles.json").is_file():
        manage("collectstatic", "--noinput", "--verbosity", "0", env=env, timeout=120)


def base_env(redis_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "DJANGO_"))}
    env.update(
        {
            "REDIS_URL": redis_url,
            "DATABASE_URL": f"sqlite:///{data_dir / 'chat.sqlite3'}",
            "CHAT_DATA_DIR": str(data_dir),
            # The session's collected static files (tests/support/static_plugin.py).
            "CHAT_STATIC_ROOT": os.environ.get("CHAT_STATIC_ROOT", ""),
            "DJANGO_SETTINGS_MODULE": "chatsite.settings",
            "PYTHONUNBUFFERED": "1",
            # Production settings (DEBUG off) on a test box: a key, SQLite allowed, plain http.
            "DJANGO_SECRET_KEY": "test-" + "k" * 60,
            "CHAT_ALLOW_SQLITE": "1",
            "DJANGO_SECURE_SSL_REDIRECT": "0",
            "DJANGO_SECURE_COOKIES": "0",
            # Every test client comes from 127.0.0.1: one address for all of them. A test of
            # the per-address limit sets its own.
            "CHAT_RATE_LIMIT_PER_ADDRESS": "1000000/1",
        }
    )
    env.update(extra)
    return env


def http_get(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body or b"null")
        except ValueError:
            return exc.code, body.decode(errors="replace")


@dataclass
class Node:
    name: str
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> Node:
        data_dir = Path(self.env["CHAT_DATA_DIR"])
        self.log_path = data_dir / f"node-{self.name}-{self.port}.log"
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "runnode", "--host", "127.0.0.1",
             "--port", str(self.port), "--node-name", self.name],
            env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"node {self.name} exited early:\n{self.log()}")
            with contextlib.suppress(OSError):
                status, _ = http_get(f"{self.http}/readyz", timeout=1)
                if status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"node {self.name} not ready in {timeout}s:\n{self.log()}")

    def get(self, path: str) -> tuple[int, Any]:
        return http_get(f"{self.http}{path}")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (drain); returns the exit code."""
        self.signal(signal.SIGTERM)
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-5000:]

    def ensure_stopped(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class Cluster:
    """Nodes sharing one Redis and one database (a SQLite file unless ``database_url`` names
    another); every process is ended in ``close``."""

    def __init__(
        self, redis_url: str, data_dir: Path, *, database_url: str | None = None, **env: str
    ) -> None:
        self.redis_url = redis_url
        self.data_dir = data_dir
        self.env = base_env(redis_url, data_dir, **env)
        if database_url is not None:  # a PostgreSQL (tests/support/pg_plugin.py) or a file
            self.env["DATABASE_URL"] = database_url
        self.nodes: list[Node] = []
        manage("migrate", "--noinput", env=self.env)
        ensure_static_files(self.env)

    def create_room(self, slug: str) -> None:
        manage("createroom", slug, env=self.env)

    def add(self, name: str, *, wait: bool = True, **env: str) -> Node:
        node = Node(name, {**self.env, **env})
        self.nodes.append(node)
        return node.start(wait=wait)

    def close(self) -> None:
        for node in self.nodes:
            node.ensure_stopped()
