"""The hand-off pause itself, without client processes competing for the CPU.

    .venv/bin/python benchmarks/handoff_inprocess.py [--rooms 100] [--drains 20] [--messages 150]

Three cluster runtimes in one process share an embedded Redis. Each drain: the node owning the
most rooms drains (rooms handed off 4 at a time, each successor asked to claim by RPC); the pause
of a room is the time from its server's stop to its successor serving it (the hand-off call
returns only after the successor confirmed). A sender keeps one command in flight per room
throughout, so hand-offs happen under traffic; every ack is checked against the log at the end.
The drained node is replaced by a fresh one. Results: benchmarks/results/handoff_inprocess.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.commands import Command  # noqa: E402
from cluster.config import ClusterConfig  # noqa: E402
from cluster.embedded import EmbeddedRedis  # noqa: E402
from cluster.runtime import ClusterRuntime  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def node(name: str, url: str) -> ClusterRuntime:
    return ClusterRuntime(ClusterConfig(name, rate_limit=(10**6, 1.0), send_timeout_ms=10_000), url)


def write_results(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--drains", type=int, default=20)
    parser.add_argument("--messages", type=int, default=150, help="history per room first")
    parser.add_argument("--interval-ms", type=int, default=250, help="sender sleep per room")
    parser.add_argument("--out", default=str(RESULTS / "handoff_inprocess.json"))
    args = parser.parse_args()
    server = EmbeddedRedis.start(appendonly=False)
    nodes = [node(f"n{i}", server.url) for i in range(3)]
    pauses: list[float] = []
    acks: dict[str, dict[str, int]] = {}
    drains: list[dict[str, Any]] = []
    stop = asyncio.Event()
    try:
        for rt in nodes:
            await rt.start()
        await asyncio.sleep(0.5)
        rooms = [f"room-{i}" for i in range(args.rooms)]
        for i, slug in enumerate(rooms):
            rt = nodes[i % 3]
            acks[slug] = {}
            for m in range(args.messages):
                ack = await rt.submit(slug, Command("send", "u", f"h{m}", body="hello " * 8))
                acks[slug][f"h{m}"] = ack.seq

        async def sender(slug: str, k: int) -> None:
            n = 0
            while not stop.is_set():
                entry = nodes[k % len(nodes)]
                if entry.state != "running":
                    k += 1
                    continue
                client_id = f"s{n}"
                ack = await entry.submit(slug, Command("send", "u", client_id, body="live"))
                acks[slug][client_id] = ack.seq
                n += 1
                await asyncio.sleep(args.interval_ms / 1000)

        senders = [asyncio.create_task(sender(slug, i)) for i, slug in enumerate(rooms)]
        generation = 3
        for d in range(args.drains):
            victim = max(nodes, key=lambda rt: len(rt.supervisor.servers))
            owned = len(victim.supervisor.servers)
            original = victim.supervisor.handoff
            these: list[float] = []

            async def timed(slug: str, successor: str | None, original: Any = original,
                            these: list[float] = these) -> bool:  # fmt: skip
                started = time.perf_counter()
                moved = bool(await original(slug, successor))
                these.append(time.perf_counter() - started)
                return moved

            victim.supervisor.handoff = timed  # type: ignore[method-assign]
            started = time.perf_counter()
            await victim.drain()
            drained_in = time.perf_counter() - started
            nodes.remove(victim)
            await victim.stop()
            fresh = node(f"n{generation}", server.url)
            generation += 1
            await fresh.start()
            nodes.append(fresh)
            pauses.extend(these)
            drains.append({
                "drain": d + 1, "rooms": owned, "drain_s": round(drained_in, 3),
                "median_ms": round(statistics.median(these) * 1000, 1) if these else None,
            })  # fmt: skip
            print(drains[-1], flush=True)
            await asyncio.sleep(1.0)  # let the newcomer's rebalancing settle
        stop.set()
        await asyncio.wait_for(asyncio.gather(*senders), 30)
        lost = duplicated = 0
        for slug, sent in acks.items():
            page = await nodes[0].events(slug, after=0, limit=100_000)
            seen: dict[str, list[int]] = {}
            for event in page.events:
                seen.setdefault(event.get("client_id") or "", []).append(event["seq"])
            lost += sum(1 for cid, seq in sent.items() if seen.get(cid) != [seq])
            duplicated += sum(1 for seqs in seen.values() if len(seqs) > 1)
    finally:
        for rt in nodes:
            if rt.state != "stopped":
                await rt.stop()
        server.stop()
    results = {
        "machine": f"{os.cpu_count()} cores",
        "when": time.strftime("%F %T"),
        "rooms": args.rooms,
        "offered_commands_per_s": round(args.rooms * 1000 / max(args.interval_ms, 1)),
        "drains": len(drains),
        "handoffs": len(pauses),
        "pause_median_ms": round(statistics.median(pauses) * 1000, 1),
        "pause_p99_ms": round(pct(pauses, 0.99) * 1000, 1),
        "pause_max_ms": round(max(pauses) * 1000, 1),
        "commands_acked": sum(len(v) for v in acks.values()),
        "lost": lost,
        "duplicated": duplicated,
        "goal": {"median_ms": 50, "p99_ms": 200, "lost": 0, "duplicated": 0},
        "per_drain": drains,
    }
    print(json.dumps({k: v for k, v in results.items() if k != "per_drain"}, indent=2))
    write_results(Path(args.out), results)


if __name__ == "__main__":
    asyncio.run(main())
