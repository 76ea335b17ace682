"""The system under test for chaos runs: Redis processes of our own (never the session's),
optionally a real replica and TCP proxies in front of them, and ``runnode`` processes.

Blocking work (starting a node, waiting for an exit, an HTTP call) runs in a thread so the
recording clients on the event loop keep their timestamps honest.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_sync

from cluster.embedded import _die_with_parent, free_port, redis_server_binary
from tests.chaos.checker import Excuse, Loss
from tests.chaos.proxy import RedisProxy
from tests.chaos.recorder import now
from tests.support.nodes import Cluster, Node, base_env, http_get


@dataclass
class RedisProcess:
    """One redis-server on 127.0.0.1 with its own directory; ended by its pid only."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    aof: bool = True  # appendonly yes + appendfsync always: an acked write survives SIGKILL
    replicaof: int | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--save", "", "--protected-mode", "no", "--logfile", str(self.data_dir / "redis.log"),
            "--appendonly", "yes" if self.aof else "no", "--appendfsync", "always",
        ]  # fmt: skip
        if self.replicaof is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replicaof)]
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()}")
            with contextlib.suppress(redis_sync.RedisError, OSError):
                if self.client().ping():
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} not up in {timeout_s}s")

    def client(self) -> redis_sync.Redis:
        return redis_sync.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def wipe(self) -> None:
        """Forget everything on disk (a Redis restarted without persistence)."""
        for path in self.data_dir.glob("*"):
            if path.name != "redis.log":
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def synced(self) -> bool:
        """A replica whose link is up and whose initial sync is done."""
        with contextlib.suppress(redis_sync.RedisError, OSError):
            info = self.client().info("replication")
            return info.get("master_link_status") == "up" and not info.get(
                "master_sync_in_progress"
            )
        return False

    def log(self) -> str:
        path = self.data_dir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


class PreparedCluster(Cluster):
    """A Cluster on a database that is already migrated (a copy of a template)."""

    def __init__(self, redis_url: str, data_dir: Path, **env: str) -> None:
        self.redis_url = redis_url
        self.data_dir = data_dir
        self.env = base_env(redis_url, data_dir, **env)
        self.nodes: list[Node] = []


def prepare_template(directory: Path, rooms: tuple[str, ...], redis_url: str) -> Path:
    """Migrate a database and create ``rooms`` in it, once; worlds copy the file."""
    cluster = Cluster(redis_url, directory)
    for room in rooms:
        cluster.create_room(room)
    return directory / "chat.sqlite3"


@dataclass
class Settings:
    nodes: int = 2
    rooms: tuple[str, ...] = ("lobby",)
    proxy: bool = False  # nodes reach Redis through a RedisProxy (slow / reset / black hole)
    replica: bool = False  # a real replica, fed through its own proxy (so it can lag)
    lease_ms: int = 1500
    send_timeout_ms: int = 2000
    env: dict[str, str] = field(default_factory=dict)
    # A database already migrated, with the rooms: copied instead of running `migrate` and
    # `createroom` again (seconds each on a busy machine).
    template_db: Path | None = None

    @property
    def answer_budget_s(self) -> float:
        return self.send_timeout_ms / 1000 + 1.0


class World:
    """Redis (+ replica, + proxies) and nodes; ``close()`` ends every process it started."""

    def __init__(self, tmp: Path, settings: Settings | None = None) -> None:
        self.tmp = tmp
        self.settings = settings or Settings()
        self.redis: RedisProcess | None = None
        self.replica: RedisProcess | None = None
        self.proxy: RedisProxy | None = None
        self.repl_proxy: RedisProxy | None = None
        self.cluster: Cluster | None = None
        self.excuses: list[Excuse] = []
        self.losses: list[Loss] = []
        self.faults: list[tuple[float, str]] = []
        self.anomalies: list[str] = []  # things a fault noticed that are not the checker's
        self.old_redis: list[RedisProcess] = []  # killed primaries, kept to end them surely
        self._redis_generation = 0

    # -- set-up -----------------------------------------------------------------------------

    async def start(self) -> World:
        s = self.settings
        self.redis = await asyncio.to_thread(self._new_redis().start)
        url = self.redis.url
        if s.proxy:
            self.proxy = RedisProxy(self.redis.port).start()
            url = self.proxy.url
        if s.replica:
            await self.add_replica()
        env = {
            "CHAT_LEASE_TTL_MS": str(s.lease_ms),
            "CHAT_SEND_TIMEOUT_MS": str(s.send_timeout_ms),
            "CHAT_RATE_LIMIT": "1000/1",
            "CHAT_RATE_LIMIT_PER_ADDRESS": "100000/1",
            "CHAT_MAX_SOCKETS_PER_ADDRESS": "10000",
            # Production settings (DEBUG off) on a test box: a key, SQLite allowed.
            "DJANGO_SECRET_KEY": "chaos-" + "k" * 60,
            "CHAT_ALLOW_SQLITE": "1",
            **s.env,
        }
        if s.template_db is not None:
            shutil.copyfile(s.template_db, self.tmp / "chat.sqlite3")
            self.cluster = PreparedCluster(url, self.tmp, **env)
        else:
            self.cluster = await asyncio.to_thread(Cluster, url, self.tmp, **env)
            for room in s.rooms:
                await asyncio.to_thread(self.cluster.create_room, room)
        names = [chr(ord("a") + i) for i in range(s.nodes)]
        for name in names:
            self.cluster.add(name, wait=False)
        await asyncio.gather(*(asyncio.to_thread(n.wait_ready, 60) for n in self.nodes))
        return self

    def _new_redis(self, replicaof: int | None = None) -> RedisProcess:
        self._redis_generation += 1
        return RedisProcess(self.tmp / f"redis-{self._redis_generation}", replicaof=replicaof)

    async def add_replica(self, timeout_s: float = 20.0) -> None:
        """A real replica of the current primary, through a proxy that can hold its feed back."""
        assert self.redis is not None
        self.repl_proxy = RedisProxy(self.redis.port).start()
        self.replica = await asyncio.to_thread(self._new_redis(self.repl_proxy.port).start)
        deadline = now() + timeout_s
        while not await asyncio.to_thread(self.replica.synced):
            if now() > deadline:
                raise RuntimeError(f"replica never synced: {self.replica.log()}")
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.close)
        for proxy in (self.proxy, self.repl_proxy):
            if proxy is not None:
                await asyncio.to_thread(proxy.stop)
        for server in (self.redis, self.replica):
            if server is not None:
                await asyncio.to_thread(server.kill)
        for server in self.old_redis:
            await asyncio.to_thread(server.kill)

    # -- what faults and checks ask -----------------------------------------------------------

    @property
    def nodes(self) -> list[Node]:
        assert self.cluster is not None
        return self.cluster.nodes

    def alive(self) -> list[Node]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def bases(self) -> list[str]:
        """Every node's address: a client tries the next one when one refuses."""
        return [n.ws for n in self.nodes]

    def note(self, what: str) -> None:
        t = now()
        self.faults.append((t, what))
        # t= is the clock of the journal's records: the checker's output lines up with it.
        print(f"  [{time.strftime('%H:%M:%S')} t={t:.3f}] {what}", flush=True)

    async def get(self, path: str, timeout_s: float = 10.0) -> Any:
        """GET from any live node that answers 200; retried (bounded) while the cluster heals."""
        deadline = now() + timeout_s
        last: Any = None
        while now() < deadline:
            for node in self.alive():
                with contextlib.suppress(OSError):
                    status, body = await asyncio.to_thread(http_get, f"{node.http}{path}", 3.0)
                    if status == 200:
                        return body
                    last = (status, body)
            await asyncio.sleep(0.2)
        raise RuntimeError(f"GET {path}: no node answered 200 in {timeout_s}s (last {last})")

    async def owner_of(self, room: str, timeout_s: float = 10.0) -> Node | None:
        deadline = now() + timeout_s
        while now() < deadline:
            view = await self.get("/api/cluster/")
            owner = next((r["owner"] for r in view["rooms"] if r["slug"] == room), None)
            node = next((n for n in self.alive() if n.name == owner), None)
            if node is not None:
                return node
            await asyncio.sleep(0.2)
        return None

    async def log(self, room: str) -> list[dict[str, Any]]:
        """The room's whole log from the events API, page by page."""
        events: list[dict[str, Any]] = []
        while True:
            after = int(events[-1]["seq"]) if events else 0
            page = await self.get(f"/api/rooms/{room}/events?after={after}&limit=1000")
            if not page["events"]:
                return events
            events.extend(page["events"])

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Every node process is up and answers /readyz 200."""
        deadline = now() + timeout_s
        for node in self.nodes:
            while True:
                with contextlib.suppress(OSError):
                    status, _ = await asyncio.to_thread(http_get, f"{node.http}/readyz", 2.0)
                    if status == 200:
                        break
                if now() > deadline:
                    raise RuntimeError(f"node {node.name} not ready: {node.log()[-1500:]}")
                await asyncio.sleep(0.2)
