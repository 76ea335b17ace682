"""Capacity figure for a node: the CPU it spends per room event it receives over pub/sub, apart
from the per-socket write.

    .venv/bin/python benchmarks/capacity_node_receive.py [--seconds 5] [--rates 500,2000,5000]

Why: the committed fan-out runs (docs/benchmarks.md) give server CPU per delivery with 25
(S1) or 250 (one room x 500) local sockets per message per node. A cluster whose load balancer
spreads a room's members over many nodes has ~1 local socket per message per node, and then
what a node spends per received message, not per socket, decides the cores. This measures it.

One ClusterRuntime (in this process) with a listener (a stand-in socket that only counts
frames) in each of ``--rooms`` rooms; a separate publisher process PUBLISHes real event frames
(``E<seq> <event JSON>``, what the append script publishes, seqs in order per room) to the
rooms' channels at each of ``--rates`` messages/s. Figure: this process's CPU
(time.process_time, every thread) over the window, minus its idle rate, / messages; with one
listener per room at each rate, and five at the middle rate, so that the per-listener part (the
delivery loop, not a socket write) shows apart. A busier node reads more messages per loop turn
and pays less per message: hence several rates. CPU, not throughput: the machine is shared.
Writes bench/results/capacity-node-receive-STAMP.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from capacity_common import redis_binary, redis_version, start_redis, write_result  # noqa: E402

from cluster.config import ClusterConfig  # noqa: E402
from cluster.keys import RoomKeys  # noqa: E402
from cluster.runtime import ClusterRuntime  # noqa: E402

# The event JSON the append script publishes for a 64-byte message (no seq: the frame has it).
EVENT = json.dumps(
    {
        "type": "message", "room": "ROOM", "user": "u3", "body": "x" * 64,
        "ts": 1796447412963, "client_id": "c41754", "author": "n:u3",
    },
    separators=(",", ":"),
)  # fmt: skip

PUBLISHER = r"""
import sys, time, redis
port, rooms, rate = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
seconds, event = float(sys.argv[4]), sys.argv[5]
client = redis.Redis(port=port)
seqs = [0] * rooms
sent = 0
tick = 0.02
per_tick = max(1, int(rate * tick))
start = time.monotonic()
while time.monotonic() - start < seconds:
    pipe = client.pipeline(transaction=False)
    for _ in range(per_tick):
        room = sent % rooms
        seqs[room] += 1
        body = event.replace("ROOM", "cap%d" % room)
        pipe.publish("chat:{room:cap%d}:events" % room, "E%d %s" % (seqs[room], body))
        sent += 1
    pipe.execute()
    target = start + (sent / rate)
    delay = target - time.monotonic()
    if delay > 0:
        time.sleep(delay)
print(sent)
"""


class CountingListener:
    def __init__(self, user: str) -> None:
        self.user = user
        self.frames = 0

    def deliver(self, frame: dict[str, Any]) -> None:
        self.frames += 1

    def request_close(self, code: int) -> None:
        pass


async def one_shape(
    url: str, port: int, rooms: int, per_room: int, rate: int, seconds: float
) -> dict[str, Any]:
    runtime = ClusterRuntime(ClusterConfig(f"cap-recv-{per_room}"), url)
    await runtime.start()
    listeners: list[CountingListener] = []
    try:
        for room in range(rooms):
            for member in range(per_room):
                listener = CountingListener(f"user{member}")
                await runtime.attach(f"cap{room}", listener)
                listeners.append(listener)
        assert all(RoomKeys(f"cap{r}").channel for r in range(rooms))
        await asyncio.sleep(3.0)  # one presence repair period: no start-up work in the window
        idle_start, idle_clock = time.process_time(), time.monotonic()
        await asyncio.sleep(2.0)
        idle_rate = (time.process_time() - idle_start) / (time.monotonic() - idle_clock)
        frames_before = sum(x.frames for x in listeners)
        cpu_start, clock_start = time.process_time(), time.monotonic()
        publisher = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PUBLISHER, str(port), str(rooms), str(rate), str(seconds),
            EVENT, stdout=subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(publisher.communicate(), seconds + 30)
        sent = int(out.decode().strip().splitlines()[-1])
        expected = sent * per_room
        deadline = time.monotonic() + 10
        while sum(x.frames for x in listeners) - frames_before < expected:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        window = time.monotonic() - clock_start
        spent = time.process_time() - cpu_start - idle_rate * window
        delivered = sum(x.frames for x in listeners) - frames_before
    finally:
        await runtime.stop()
    row = {
        "rate_per_s": rate,
        "rooms": rooms,
        "listeners_per_room": per_room,
        "messages": sent,
        "deliveries": delivered,
        "all_delivered": delivered == expected,
        "window_s": round(window, 2),
        "node_cpu_us_per_message": round(spent / max(sent, 1) * 1e6, 1),
        "node_cpu_us_per_delivery": round(spent / max(delivered, 1) * 1e6, 1),
        "idle_node_cores": round(idle_rate, 4),
    }
    print(json.dumps(row), flush=True)
    return row


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rates", default="500,2000,5000", help="messages/s, 1 listener/room")
    parser.add_argument("--rooms", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    binary = redis_binary()
    started = time.monotonic()
    server = start_redis(binary, "--appendonly", "no")
    rates = [int(x) for x in args.rates.split(",")]
    try:
        rows = [
            await one_shape(server.url, server.port, args.rooms, 1, rate, args.seconds)
            for rate in rates
        ]
        # 5 listeners per room at the middle rate: the per-listener part, apart.
        middle = rates[len(rates) // 2]
        rows.append(await one_shape(server.url, server.port, args.rooms, 5, middle, args.seconds))
    finally:
        server.stop()
    one = next(r for r in rows if r["listeners_per_room"] == 1 and r["rate_per_s"] == middle)
    five = rows[-1]
    per_listener = (five["node_cpu_us_per_message"] - one["node_cpu_us_per_message"]) / 4
    results = {
        "script": "benchmarks/capacity_node_receive.py",
        "redis_server": redis_version(binary),
        "note": "the node process's own CPU (time.process_time) per message, not throughput",
        "rows": rows,
        "per_received_message_us_by_rate": {
            str(r["rate_per_s"]): r["node_cpu_us_per_message"]
            for r in rows
            if r["listeners_per_room"] == 1
        },
        "per_listener_in_process_us": round(per_listener, 1),
        "duration_s": round(time.monotonic() - started, 1),
    }
    path = write_result("capacity-node-receive", results)
    print(json.dumps(results["per_received_message_us_by_rate"]), per_listener)
    print(f"wrote {path.relative_to(ROOT)} in {results['duration_s']} s")


if __name__ == "__main__":
    asyncio.run(main())
