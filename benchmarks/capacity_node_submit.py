"""Capacity figure for a node: the CPU of the cluster part of a command (``runtime.submit``:
router, room server, append script round trip, ack), when the room's owner is the node itself
and when it is another node (one RPC over Redis pub/sub each way).

    .venv/bin/python benchmarks/capacity_node_submit.py [--seconds 5]

Two ClusterRuntimes in this process, on a redis-server this script starts; every room is owned
by node ``a``. 32 concurrent senders submit ``send`` commands to 16 rooms, first on ``a``
(local), then on ``b`` (remote: b's router asks a by RPC). No socket is attached anywhere, so no
delivery is counted. Figure: this process's CPU (time.process_time: both runtimes, every
thread) over the window, minus its idle rate, / messages. What it leaves out, and the fan-out
runs include: the WebSocket frame, the consumer's checks and the ack frame on the sender's
socket. CPU, not throughput: the machine is shared.
Writes bench/results/capacity-node-submit-STAMP.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from capacity_common import redis_binary, redis_version, start_redis, write_result  # noqa: E402

from cluster.commands import Command  # noqa: E402
from cluster.config import ClusterConfig  # noqa: E402
from cluster.runtime import ClusterRuntime  # noqa: E402

ROOMS = 16
SENDERS = 32
BODY = "x" * 64


def node(name: str, url: str) -> ClusterRuntime:
    unlimited = (10**9, 1.0)
    config = ClusterConfig(name, rate_limit=unlimited, rate_limit_per_address=unlimited)
    return ClusterRuntime(config, url)


async def measure(sender: ClusterRuntime, seconds: float, tag: str) -> dict[str, Any]:
    counter = 0

    async def loop(worker: int, deadline: float) -> int:
        nonlocal counter
        sent = 0
        while time.monotonic() < deadline:
            counter += 1
            room = f"cap{worker % ROOMS}"
            await sender.submit(room, Command("send", f"u{worker}", f"{tag}{counter}", body=BODY))
            sent += 1
        return sent

    # Warm (connections in the pool, the remote path's caches), not counted.
    await asyncio.gather(*(loop(w, time.monotonic() + 1.0) for w in range(SENDERS)))
    idle_cpu, idle_clock = time.process_time(), time.monotonic()
    await asyncio.sleep(2.0)
    idle_rate = (time.process_time() - idle_cpu) / (time.monotonic() - idle_clock)
    cpu_start, clock_start = time.process_time(), time.monotonic()
    deadline = clock_start + seconds
    sent = sum(await asyncio.gather(*(loop(w, deadline) for w in range(SENDERS))))
    window = time.monotonic() - clock_start
    spent = time.process_time() - cpu_start - idle_rate * window
    row = {
        "path": tag,
        "messages": sent,
        "window_s": round(window, 2),
        "process_cores": round((time.process_time() - cpu_start) / window, 3),
        "node_cpu_us_per_message": round(spent / max(sent, 1) * 1e6, 1),
        "idle_cores": round(idle_rate, 4),
    }
    print(json.dumps(row), flush=True)
    return row


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    binary = redis_binary()
    started = time.monotonic()
    server = start_redis(binary, "--appendonly", "no")
    a, b = node("cap-a", server.url), node("cap-b", server.url)
    try:
        await a.start()
        await b.start()
        for room in range(ROOMS):
            await a.supervisor.activate(f"cap{room}")
        rows = [await measure(a, args.seconds, "local"), await measure(b, args.seconds, "remote")]
        owners = {(await b.registry.lookup(f"cap{r}", fresh=True)).node for r in range(ROOMS)}  # type: ignore[union-attr]
    finally:
        await b.stop()
        await a.stop()
        server.stop()
    results = {
        "script": "benchmarks/capacity_node_submit.py",
        "redis_server": redis_version(binary),
        "note": "the node processes' own CPU (time.process_time) per message, not throughput",
        "rooms": ROOMS,
        "senders": SENDERS,
        "owners_at_end": sorted(owners),
        "rows": rows,
        "duration_s": round(time.monotonic() - started, 1),
    }
    path = write_result("capacity-node-submit", results)
    print(f"wrote {path.relative_to(ROOT)} in {results['duration_s']} s")


if __name__ == "__main__":
    asyncio.run(main())
