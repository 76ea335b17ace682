"""Where an idle socket's memory goes: one runnode under ``tracemalloc``, N idle sockets in one
room, the allocations that grew between two snapshots, per socket, by source line.

    .venv/bin/python benchmarks/socket_memory.py [--sockets 500] [--top 25]

Prints the traced growth per socket and the lines that allocated it, and writes the figures to
benchmarks/results/socket-memory-RUN.json. The node runs in a child process (started by this
script, ended by its pid); the snapshots are taken on SIGUSR2 by a small wrapper around
``manage.py``. Traced bytes leave out the allocator's own overhead: the bench's RSS figure
(``bench.run --scenarios idle``) is the one to compare with other servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import wire  # noqa: E402
from bench.systems import PROJECT_ENV  # noqa: E402
from cluster.embedded import EmbeddedRedis, free_port  # noqa: E402
from tests.support.nodes import base_env, manage  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

# Run in the node's process: tracemalloc from the start, a snapshot to SNAP.<n> on SIGUSR2.
WRAPPER = """
import gc, os, runpy, signal, sys, tracemalloc
tracemalloc.start(12)
count = [0]
def dump(*_):
    gc.collect()
    tracemalloc.take_snapshot().dump(os.environ["SNAP"] + "." + str(count[0]))
    count[0] += 1
signal.signal(signal.SIGUSR2, dump)
sys.argv = ["manage.py", *sys.argv[1:]]
sys.path.insert(0, os.environ["ROOT"])
runpy.run_path(os.path.join(os.environ["ROOT"], "manage.py"), run_name="__main__")
"""


def wait_for_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no snapshot at {path}")
        time.sleep(0.1)
    size = -1
    while size != path.stat().st_size:  # written out completely
        size = path.stat().st_size
        time.sleep(0.2)


def snapshot(node: subprocess.Popen[bytes], path: Path) -> None:
    node.send_signal(signal.SIGUSR2)
    wait_for_file(path, 30)


async def open_sockets(port: int, node: subprocess.Popen[bytes], work: Path, sockets: int) -> None:
    url = f"ws://127.0.0.1:{port}/ws/rooms/mem0/?name=u"
    origin = f"http://127.0.0.1:{port}"
    connections: list[wire.WireConnection] = []
    deadline = time.monotonic() + 60
    while True:
        try:
            connections.append(await wire.connect(url + "w0", origin=origin, timeout=5))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    for i in range(1, 20):  # warm: first-use caches and lazy imports are not per socket
        connections.append(await wire.connect(url + f"w{i}", origin=origin, timeout=10))
    await asyncio.sleep(2)
    await asyncio.to_thread(snapshot, node, work / "snap.0")
    for i in range(sockets):
        connections.append(await wire.connect(url + str(i), origin=origin, timeout=10))
    await asyncio.sleep(4)  # presence and buffers settle
    await asyncio.to_thread(snapshot, node, work / "snap.1")
    for connection in connections:
        connection.abort()
    await asyncio.sleep(0.5)


def measure(sockets: int, top: int) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="socket-memory-"))
    redis = EmbeddedRedis.start(work / "redis", appendonly=False)
    env = base_env(redis.url, work, **PROJECT_ENV)
    env.update(SNAP=str(work / "snap"), ROOT=str(ROOT))
    manage("migrate", "--noinput", "-v", "0", env=env, timeout=120)
    manage("createroom", "mem0", "-v", "0", env=env, timeout=120)
    (work / "wrap.py").write_text(WRAPPER)
    port = free_port()
    with open(work / "node.log", "w") as log:
        node = subprocess.Popen(
            [sys.executable, str(work / "wrap.py"), "runnode", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            asyncio.run(open_sockets(port, node, work, sockets))
        finally:
            node.terminate()
            node.wait(30)
            redis.stop()
    before = tracemalloc.Snapshot.load(str(work / "snap.0"))
    after = tracemalloc.Snapshot.load(str(work / "snap.1"))
    stats = after.compare_to(before, "lineno")
    growth = sum(s.size_diff for s in stats)
    lines = []
    for stat in stats[:top]:
        frame = stat.traceback[0]
        lines.append(
            {
                "bytes_per_socket": round(stat.size_diff / sockets),
                "blocks_per_socket": round(stat.count_diff / sockets, 1),
                "where": f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}",
            }
        )
    return {
        "sockets": sockets,
        "traced_kb_per_socket": round(growth / sockets / 1024, 1),
        "top": lines,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if args.sockets < 1:
        parser.error("--sockets must be at least 1")
    result = measure(args.sockets, args.top)
    print(f"traced growth: {result['traced_kb_per_socket']} KB per idle socket")
    for line in result["top"]:  # type: ignore[attr-defined]
        where, size, blocks = line["where"], line["bytes_per_socket"], line["blocks_per_socket"]
        print(f"{size:7d} B {blocks:5.1f} blocks  {where}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"socket-memory-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
