"""What ``CHAT_REDIS_MIN_REPLICAS=1`` costs per ack, against 0, in one run.

    .venv/bin/python benchmarks/replica_ack_cost.py [--seconds 4] [--senders 20]

Starts a master and one replica (redis-server on loopback, no persistence; Redis 7 if the
machine has it) and, one at a time, an in-process cluster runtime on the master with
min_replicas 0 or 1 (each append then runs ``[EVALSHA, WAIT 1 t]`` on one connection). For each load
shape, each setting sends for ``--seconds`` through ``ClusterRuntime.submit`` (the router,
the room server, the append script) and records every ack's latency:

- sequential: one sender, one command at a time (the latency of a lone ack);
- one room: ``--senders`` senders in one room (its server runs commands one at a time, so
  the replica's round trip is paid in series);
- many rooms: ``--senders`` senders, each in its own room (the WAITs overlap).

The settings alternate per shape (0, 1, 1, 0: half the time each) on the same Redis pair, each
half after a short warm-up (the first one claims the rooms). Prints a table; writes
bench/results/replica_ack_cost-<UTC time>.json. Loopback only: a real replica's network round
trip adds to every ack with min_replicas 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.commands import Command  # noqa: E402
from cluster.config import ClusterConfig  # noqa: E402
from cluster.runtime import ClusterRuntime  # noqa: E402
from tests.support.sentinel_topology import SentinelTopology, binary  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WARM_UP_S = 0.5


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def runtime(name: str, url: str, min_replicas: int) -> ClusterRuntime:
    config = ClusterConfig(
        name, rate_limit=(10**6, 1.0), send_timeout_ms=5000, min_replicas=min_replicas
    )
    return ClusterRuntime(config, url)


async def load(rt: ClusterRuntime, rooms: list[str], seconds: float) -> tuple[list[float], float]:
    """Each room in ``rooms`` gets one sender (a room may be listed more than once); returns
    the latency of every ack within ``seconds`` after the warm-up, and the CPU seconds this
    process spent meanwhile (the node's side of the cost)."""
    latencies: list[float] = []
    cpu: list[float] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from, stop_at = start + WARM_UP_S, start + WARM_UP_S + seconds

    async def sender(index: int, room: str) -> None:
        n = 0
        while loop.time() < stop_at:
            if not cpu and loop.time() >= measure_from:
                cpu.append(time.process_time())
            n += 1
            command = Command("send", f"u{index}", f"{rt.node}-{index}-{n}", body="hello " * 8)
            sent = loop.time()
            await rt.submit(room, command)
            if sent >= measure_from:
                latencies.append(loop.time() - sent)

    await asyncio.gather(*(sender(i, room) for i, room in enumerate(rooms)))
    return latencies, time.process_time() - cpu[0]


def summary(latencies: list[float], seconds: float, cpu_s: float) -> dict[str, float]:
    return {
        "node_cpu_us_per_ack": round(cpu_s / len(latencies) * 1e6, 1),
        "acks": len(latencies),
        "acks_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(pct(latencies, 0.50) * 1000, 3),
        "p99_ms": round(pct(latencies, 0.99) * 1000, 3),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="per shape and setting")
    parser.add_argument("--senders", type=int, default=20)
    args = parser.parse_args()
    topology = SentinelTopology(Path(tempfile.mkdtemp(prefix="replica-ack-")), sentinels=0)
    topology.start()
    master = topology.master.client()
    shapes = {
        "sequential": ["seq"],
        "one room": ["one"] * args.senders,
        "many rooms": [f"many-{i}" for i in range(args.senders)],
    }
    results: dict[str, Any] = {}
    try:
        for shape, rooms in shapes.items():
            # A-B-B-A halves: a drift in the machine's load (other processes) hits both. One
            # runtime at a time, on an emptied Redis: two runtimes on one Redis would be one
            # cluster of two nodes, each forwarding the other's rooms.
            latencies: dict[int, list[float]] = {0: [], 1: []}
            cpu = {0: 0.0, 1: 0.0}
            for turn, n in enumerate((0, 1, 1, 0)):
                master.flushall()
                rt = runtime(f"{shape.replace(' ', '-')}-{turn}", topology.master_url, n)
                await rt.start()
                try:
                    measured, cpu_s = await load(rt, rooms, args.seconds / 2)
                    latencies[n] += measured
                    cpu[n] += cpu_s
                finally:
                    await rt.stop()
            results[shape] = {
                f"min_replicas={n}": summary(values, args.seconds, cpu[n])
                for n, values in latencies.items()
            }
        wait_stats = master.info("commandstats").get("cmdstat_wait", {})
        version = master.info("server")["redis_version"]
    finally:
        topology.stop()
    print(f"Redis {version} master + 1 replica on loopback; {args.seconds:.0f} s per cell")
    print(
        f"{'shape':<12} {'setting':<15} {'acks/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'node CPU us/ack':>16}"
    )
    for shape, cells in results.items():
        for setting, cell in cells.items():
            print(
                f"{shape:<12} {setting:<15} {cell['acks_per_s']:>8} {cell['p50_ms']:>8} "
                f"{cell['p99_ms']:>8} {cell['node_cpu_us_per_ack']:>16}"
            )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = RESULTS / f"replica_ack_cost-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "what": "ack latency and rate, CHAT_REDIS_MIN_REPLICAS 0 vs 1, in-process runtime",
        "redis": version,
        "redis_binary": binary(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "seconds_per_cell": args.seconds,
        "senders": args.senders,
        "results": results,
        "wait_commands_on_master": wait_stats,
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
