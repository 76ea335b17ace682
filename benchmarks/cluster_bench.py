"""Issue 3 figures: fail-over time, lease upkeep cost, remote-owner latency.

    .venv/bin/python benchmarks/cluster_bench.py [--kills 20] [--rooms 1000] [--sends 500]

Prints the figures and writes them to benchmarks/results/cluster.json. Everything runs on
loopback against its own embedded Redis; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

import redis as redis_sync  # noqa: E402

from cluster.commands import Command  # noqa: E402
from cluster.config import ClusterConfig  # noqa: E402
from cluster.embedded import EmbeddedRedis  # noqa: E402
from cluster.keys import RoomKeys  # noqa: E402
from cluster.runtime import ClusterRuntime  # noqa: E402
from tests.support.client import ChatClient  # noqa: E402
from tests.support.nodes import Cluster  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def failover(kills: int, ttl_ms: int) -> dict[str, Any]:
    """SIGKILL the owner of a busy room; time from the kill to the first new ack."""
    server = EmbeddedRedis.start(appendonly=False)
    data = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    cluster = Cluster(server.url, data, CHAT_LEASE_TTL_MS=str(ttl_ms), CHAT_RATE_LIMIT="100000/1")
    times: list[float] = []
    try:
        cluster.create_room("bench")
        live = [cluster.add(f"n{i}") for i in range(3)]
        generation = 3
        for _ in range(kills):
            owner_name = None
            while owner_name is None:  # make sure the room is active and owned
                probe = ChatClient(live[0].ws, "bench", "probe")
                await probe.connect()
                await probe.send("warm")
                await probe.wait_for(lambda p=probe: bool(p.acks), 10)
                await probe.close()
                rooms = live[0].get("/api/cluster/")[1]["rooms"]
                owner_name = rooms[0]["owner"] if rooms else None
            owner = next(n for n in live if n.name == owner_name)
            survivor = next(n for n in live if n is not owner)
            client = ChatClient(survivor.ws, "bench", "sender")
            await client.connect()
            owner.kill()
            killed = time.monotonic()
            # One command in flight at a time; the router retries it until the room answers.
            await client.send("after kill")
            await client.wait_for(lambda c=client: bool(c.acks) or bool(
                [f for f in c.frames if f.get("type") == "error"]), 15)  # fmt: skip
            if client.acks:
                times.append(time.monotonic() - killed)
            await client.close()
            live.remove(owner)
            live.append(cluster.add(f"n{generation}"))
            generation += 1
    finally:
        cluster.close()
        server.stop()
    return {
        "kills": kills,
        "lease_ttl_ms": ttl_ms,
        "recovered": len(times),
        "median_s": round(statistics.median(times), 3),
        "p95_s": round(pct(times, 0.95), 3),
        "max_s": round(max(times), 3),
        "budget_s": ttl_ms / 1000 + 1,
    }


def commandstats(client: redis_sync.Redis) -> dict[str, int]:
    info = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


async def lease_upkeep(rooms: int, seconds: float, ttl_ms: int) -> dict[str, Any]:
    """Redis calls per second spent keeping ``rooms`` active rooms owned on 3 nodes, against a
    baseline that renews one TTL'd lease key per room (the usual design) in the same Redis."""
    server = EmbeddedRedis.start(appendonly=False)
    sync = redis_sync.Redis.from_url(server.url, decode_responses=True)
    nodes = [
        ClusterRuntime(
            ClusterConfig(f"n{i}", lease_ttl_ms=ttl_ms, rate_limit=(10**6, 1.0)), server.url
        )
        for i in range(3)
    ]
    try:
        for node in nodes:
            await node.start()
        await asyncio.sleep(ttl_ms / 1000)
        sem = asyncio.Semaphore(50)

        async def activate(i: int) -> None:
            async with sem:
                await nodes[i % 3].submit(f"r{i}", Command("send", "u", f"c{i}", body="x"))

        await asyncio.gather(*(activate(i) for i in range(rooms)))
        owned = sum(len(n.supervisor.servers) for n in nodes)
        sync.config_resetstat()
        await asyncio.sleep(seconds)
        ours = commandstats(sync)
        ours_total = sum(ours.values()) - ours.get("config", 0) - ours.get("info", 0)

        # Baseline: one PEXPIRE per room lease, renewed every TTL/3 (pipelined per node).
        for i in range(rooms):
            sync.set(f"baseline:{{room:r{i}}}:lease", "n", px=ttl_ms)
        sync.config_resetstat()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pipe = sync.pipeline(transaction=False)
            for i in range(rooms):
                pipe.pexpire(f"baseline:{{room:r{i}}}:lease", ttl_ms)
            pipe.execute()
            await asyncio.sleep(ttl_ms / 3000)
        base = commandstats(sync)
        base_total = sum(base.values()) - base.get("config", 0) - base.get("info", 0)
        # The baseline window includes our idle nodes' own upkeep; subtract it.
        base_only = max(base.get("pexpire", 0), 1)
    finally:
        for node in nodes:
            await node.stop()
        sync.close()
        server.stop()
    return {
        "rooms_owned": owned,
        "nodes": 3,
        "window_s": seconds,
        "ours_calls_per_s": round(ours_total / seconds, 1),
        "ours_by_command": {k: v for k, v in sorted(ours.items()) if k not in ("config", "info")},
        "baseline_pexpire_calls_per_s": round(base_only / seconds, 1),
        "baseline_window_total_calls_per_s": round(base_total / seconds, 1),
        "ratio_baseline_over_ours": round(base_only / max(ours_total, 1), 1),
    }


async def remote_latency(sends: int) -> dict[str, Any]:
    """Latency of a send whose owner is this node versus one on another node."""
    server = EmbeddedRedis.start(appendonly=False)
    a = ClusterRuntime(ClusterConfig("a", rate_limit=(10**6, 1.0)), server.url)
    b = ClusterRuntime(ClusterConfig("b", rate_limit=(10**6, 1.0)), server.url)
    try:
        await a.start()
        await b.start()
        await a.supervisor.activate("lat")
        assert (await b.registry.lookup("lat", fresh=True)).node == "a"  # type: ignore[union-attr]

        async def run(runtime: ClusterRuntime, tag: str) -> list[float]:
            out = []
            for i in range(sends):
                start = time.perf_counter()
                await runtime.submit("lat", Command("send", "u", f"{tag}{i}", body="x"))
                out.append((time.perf_counter() - start) * 1000)
            return out

        await run(a, "warm-a")
        await run(b, "warm-b")
        local = await run(a, "l")
        remote = await run(b, "r")
    finally:
        await a.stop()
        await b.stop()
        server.stop()
    return {
        "sends": sends,
        "local_p50_ms": round(statistics.median(local), 3),
        "local_p99_ms": round(pct(local, 0.99), 3),
        "remote_p50_ms": round(statistics.median(remote), 3),
        "remote_p99_ms": round(pct(remote, 0.99), 3),
        "added_p50_ms": round(statistics.median(remote) - statistics.median(local), 3),
        "redis_keys_per_room": len(
            [RoomKeys("lat").log, RoomKeys("lat").seq, RoomKeys("lat").lease]
        ),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--sends", type=int, default=500)
    parser.add_argument("--ttl-ms", type=int, default=1500)
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--skip", default="", help="comma list of: failover,upkeep,latency")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} cores", "when": time.strftime("%F %T")}
    if "latency" not in skip:
        results["remote_owner_latency"] = await remote_latency(args.sends)
        print(json.dumps(results["remote_owner_latency"], indent=2), flush=True)
    if "upkeep" not in skip:
        results["lease_upkeep"] = await lease_upkeep(args.rooms, args.window_s, args.ttl_ms)
        print(json.dumps(results["lease_upkeep"], indent=2), flush=True)
    if "failover" not in skip:
        results["failover"] = await failover(args.kills, args.ttl_ms)
        print(json.dumps(results["failover"], indent=2), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cluster.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {RESULTS / 'cluster.json'}")


if __name__ == "__main__":
    asyncio.run(main())
