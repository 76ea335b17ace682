"""The systems under test, each two server processes on one fresh Redis, started and ended here.

Every process is ended by its own pid (SIGTERM, then SIGKILL), nothing else is touched."""

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
from pathlib import Path
from typing import Any

from cluster.embedded import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "bench" / "peers"
SYSTEMS = (
    "project",
    "channels-core",
    "channels-pubsub",
    "socketio",
    # This project under the other ASGI servers of ``runnode --server`` (docs/asgi-servers.md).
    "project-uvicorn",
    "project-wsproto",
    "project-granian",
)
# What ``scripts/bench`` runs unless told: the project against its peers. The other servers are
# a separate question (``--systems project,project-uvicorn,project-wsproto``).
COMPARISON = SYSTEMS[:4]

# Benchmark nodes: every client comes from 127.0.0.1, so the per-address limits are lifted.
PROJECT_ENV = {
    "CHAT_RATE_LIMIT": "1000000/1",
    "CHAT_RATE_LIMIT_PER_ADDRESS": "1000000/1",
    "CHAT_MAX_SOCKETS_PER_ADDRESS": "100000",
    "CHAT_MAX_SOCKETS_PER_USER": "100000",
    # the settings' default, set here so that the pauses scenario's budget (TTL + 1 s) is explicit
    "CHAT_LEASE_TTL_MS": "3000",
}


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


class ServerProcess:
    """One server process, its log in the run's folder."""

    def __init__(self, args: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log_path = log
        with open(log, "wb") as handle:
            self.process = subprocess.Popen(
                args, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.log_path.name} exited early:\n{self.tail()}")
            if http_status(url) == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{url} not ready in {timeout}s:\n{self.tail()}")

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-3000:]
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)


class System:
    """Two nodes of one system on one Redis."""

    name = ""
    protocol = ""  # how the load generator speaks to it: "project", "channels", "socketio"

    def __init__(self, work: Path) -> None:
        self.work = work / self.name
        self.work.mkdir(parents=True, exist_ok=True)
        self.redis: EmbeddedRedis | None = None
        self.servers: list[ServerProcess] = []
        self.ports: list[int] = []

    def start(self, rooms: list[str]) -> None:
        self.redis = EmbeddedRedis.start(self.work / "redis")
        self._start(rooms)

    def _start(self, rooms: list[str]) -> None:
        raise NotImplementedError

    @property
    def server_pids(self) -> list[int]:
        return [server.pid for server in self.servers]

    @property
    def redis_pid(self) -> int:
        assert self.redis is not None
        return self.redis.process.pid

    def ws_url(self, node: int, room: str, name: str, after: int | None = None) -> str:
        raise NotImplementedError

    def origin(self, node: int) -> str | None:
        return None

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        if self.redis is not None:
            self.redis.stop()

    def kill_node(self, index: int) -> None:
        """SIGKILL server ``index`` by its pid and reap it (the pauses scenario's crash)."""
        process = self.servers[index].process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        process.wait(10)

    def versions(self) -> dict[str, str]:
        return {}


class ProjectSystem(System):
    """This project: two ``runnode`` processes (daphne + the cluster runtime) on one Redis."""

    name = "project"
    protocol = "project"
    server = ""  # runnode's --server; "" is runnode's default (daphne)

    def _start(self, rooms: list[str]) -> None:
        sys.path.insert(0, str(ROOT))
        from tests.support.nodes import Cluster, manage

        assert self.redis is not None
        self.cluster = Cluster(self.redis.url, self.work, **PROJECT_ENV)
        # One process creates every room through the createroom command.
        script = (
            "from django.core.management import call_command\n"
            f"for slug in {rooms!r}:\n"
            "    call_command('createroom', slug, verbosity=0)\n"
        )
        manage("shell", "-c", script, env=self.cluster.env, timeout=120)
        server = {"RUNNODE_SERVER": self.server} if self.server else {}
        for name in ("a", "b"):
            node = self.cluster.add(name, wait=False, **server)
            self.ports.append(node.port)
        for node in self.cluster.nodes:
            node.wait_ready(60)

    @property
    def server_pids(self) -> list[int]:
        return [node.pid for node in self.cluster.nodes]

    def node_pid(self, node: int) -> int:
        return self.cluster.nodes[node].pid

    def ws_url(self, node: int, room: str, name: str, after: int | None = None) -> str:
        query = f"name={name}" + (f"&after={after}" if after is not None else "")
        return f"ws://127.0.0.1:{self.ports[node]}/ws/rooms/{room}/?{query}"

    # -- one node at a time (the pauses scenario). Slot ``i`` is ``cluster.nodes[i]`` and
    # ``ports[i]``; a node replaced or retired moves behind the slots, so ``stop`` still ends it.

    def node_name(self, index: int) -> str:
        return self.cluster.nodes[index].name

    def add_node(self, timeout: float = 60.0) -> int:
        """Start one more runnode on the same Redis; returns its slot."""
        node = self._new_node()
        slot = len(self.ports)
        self.cluster.nodes.remove(node)
        self.cluster.nodes.insert(slot, node)
        self.ports.append(node.port)
        node.wait_ready(timeout)
        return slot

    def kill_node(self, index: int) -> None:
        self.cluster.nodes[index].kill()

    def node_alive(self, index: int) -> bool:
        process = self.cluster.nodes[index].process
        return process is not None and process.poll() is None

    def drain_node(self, index: int, timeout: float = 30.0) -> int | None:
        """SIGTERM (drain) node ``index`` and wait for its exit; its exit code, None if it
        outlived ``timeout`` (then it is SIGKILLed)."""
        node = self.cluster.nodes[index]
        try:
            return node.terminate(timeout)
        except subprocess.TimeoutExpired:
            node.kill()
            return None

    def replace_node(self, index: int, timeout: float = 60.0) -> None:
        """A fresh node (new name and port, as a restarted pod would be) in slot ``index``."""
        node = self._new_node()
        old = self.cluster.nodes[index]
        self.cluster.nodes.remove(node)
        self.cluster.nodes[index] = node
        self.cluster.nodes.append(old)
        self.ports[index] = node.port
        node.wait_ready(timeout)

    def retire_node(self, index: int) -> None:
        """Drain the node in the last slot and drop the slot."""
        assert index == len(self.ports) - 1, "only the last slot can be retired"
        self.drain_node(index)
        self.ports.pop()
        self.cluster.nodes.append(self.cluster.nodes.pop(index))

    def _new_node(self) -> Any:
        taken = {node.name for node in self.cluster.nodes}
        name = next(f"n{i}" for i in range(1, 1000) if f"n{i}" not in taken)
        return self.cluster.add(name, wait=False)

    def stop(self) -> None:
        cluster = getattr(self, "cluster", None)
        if cluster is not None:
            for node in cluster.nodes:
                if node.process is not None and node.process.poll() is None:
                    node.signal(signal.SIGKILL)  # a drain is not what is measured here
                    node.process.wait(10)
        super().stop()


class ProjectUvicornSystem(ProjectSystem):
    name = "project-uvicorn"
    server = "uvicorn"  # uvicorn with the websockets library


class ProjectWsprotoSystem(ProjectSystem):
    name = "project-wsproto"
    server = "uvicorn-wsproto"


class ProjectGranianSystem(ProjectSystem):
    name = "project-granian"
    server = "granian"  # measured only: no transport probe, so no guarantee 10


class ChannelsSystem(System):
    """The Channels tutorial chat on daphne, two processes, one channels-redis layer."""

    protocol = "channels"
    layer = ""

    def _start(self, rooms: list[str]) -> None:
        assert self.redis is not None
        folder = PEERS / "channels_tutorial"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "DJANGO_"))}
        env.update(
            DJANGO_SETTINGS_MODULE="tutorial_site.settings",
            CHANNEL_LAYER=self.layer,
            REDIS_URL=self.redis.url,
            PEER_SQLITE=str(self.work / "peer.sqlite3"),
            PYTHONUNBUFFERED="1",
        )
        for index in range(2):
            port = free_port()
            self.ports.append(port)
            args = [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "tutorial_site.asgi:application",
            ]
            log = self.work / f"daphne-{index}.log"
            self.servers.append(ServerProcess(args, env=env, cwd=folder, log=log))
        for server, port in zip(self.servers, self.ports, strict=True):
            server.wait_http(f"http://127.0.0.1:{port}/healthz")

    def ws_url(self, node: int, room: str, name: str, after: int | None = None) -> str:
        return f"ws://127.0.0.1:{self.ports[node]}/ws/chat/{room}/"

    def origin(self, node: int) -> str | None:
        # The tutorial wraps its routes in AllowedHostsOriginValidator: a browser sends Origin.
        return f"http://127.0.0.1:{self.ports[node]}"


class ChannelsCoreSystem(ChannelsSystem):
    name = "channels-core"
    layer = "core"


class ChannelsPubSubSystem(ChannelsSystem):
    name = "channels-pubsub"
    layer = "pubsub"


class SocketIOSystem(System):
    """Socket.IO 4 with @socket.io/redis-adapter, two Node processes."""

    name = "socketio"
    protocol = "socketio"

    def _start(self, rooms: list[str]) -> None:
        assert self.redis is not None
        folder = PEERS / "socketio"
        if not (folder / "node_modules").is_dir():
            raise RuntimeError(f"run `npm ci` in {folder} first (scripts/bench does)")
        for index in range(2):
            port = free_port()
            self.ports.append(port)
            env = {**os.environ, "PORT": str(port), "REDIS_URL": self.redis.url}
            log = self.work / f"node-{index}.log"
            self.servers.append(ServerProcess(["node", "server.js"], env=env, cwd=folder, log=log))
        for server, port in zip(self.servers, self.ports, strict=True):
            server.wait_http(f"http://127.0.0.1:{port}/healthz")

    def ws_url(self, node: int, room: str, name: str, after: int | None = None) -> str:
        return f"ws://127.0.0.1:{self.ports[node]}/socket.io/?EIO=4&transport=websocket"


def make_system(name: str, work: Path) -> System:
    classes: dict[str, type[System]] = {
        "project": ProjectSystem,
        "channels-core": ChannelsCoreSystem,
        "channels-pubsub": ChannelsPubSubSystem,
        "socketio": SocketIOSystem,
        "project-uvicorn": ProjectUvicornSystem,
        "project-wsproto": ProjectWsprotoSystem,
        "project-granian": ProjectGranianSystem,
    }
    return classes[name](work)


def versions() -> dict[str, str]:
    """Versions of everything measured, for the results."""
    from importlib import metadata

    found: dict[str, str] = {"python": sys.version.split()[0]}
    for package in (
        "django",
        "channels",
        "channels-redis",
        "daphne",
        "twisted",
        "autobahn",
        "redis",
        "websockets",
        "uvicorn",
        "wsproto",
        "granian",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found["node"] = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    modules = PEERS / "socketio" / "node_modules"
    for package in ("socket.io", "engine.io", "ws", "@socket.io/redis-adapter", "ioredis"):
        with contextlib.suppress(OSError, ValueError):
            found[f"npm:{package}"] = json.loads((modules / package / "package.json").read_text())[
                "version"
            ]
    from cluster.embedded import redis_server_binary

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [redis_server_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        found["redis-server"] = next(
            (part.split("=")[1] for part in out.split() if part.startswith("v=")), out.strip()
        )
    return found
