"""Capacity figures for pub/sub on Redis Cluster: what one published message costs every shard,
with classic PUBLISH (broadcast to every shard over the cluster bus) against sharded SPUBLISH
(stays on the shard that owns the channel's slot).

    .venv/bin/python benchmarks/capacity_cluster_pubsub.py [--shards 3] [--messages 20000]

Starts its own Redis Cluster (``--shards`` masters, no replicas, Redis >= 7 needed for
SPUBLISH; /usr/bin/redis-server) and ``redis-cli --cluster create``. One subscriber connection
(a process standing in for a node with sockets in the room) reads a room channel on the shard
that owns the channel's slot; the other shards have no subscriber. Then ``--messages`` messages
the size of a real event frame are published to that shard (pipelined), first with PUBLISH,
then with SPUBLISH, and each shard's CPU (INFO cpu deltas) is divided by the messages.

The figure that matters: a shard that neither owns the room nor has a subscriber still pays
for every classic PUBLISH in the whole cluster, so classic pub/sub does not scale with shards.
Redis's own CPU, not wall-clock: the machine is shared. Writes
bench/results/capacity-cluster-pubsub-STAMP.json.
"""

from __future__ import annotations

import argparse
import json
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
    Server,
    Subscribers,
    cpu,
    redis_binary,
    redis_version,
    start_redis,
    write_result,
)

from cluster.keys import RoomKeys  # noqa: E402

FRAME_BYTES = 245  # a 64-byte body's event frame (capacity_redis_append.py measures it)


def start_cluster(binary: str, shards: int) -> list[Server]:
    servers: list[Server] = []
    try:
        cluster_args = [
            "--appendonly", "no", "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000",
        ]  # fmt: skip
        for _ in range(shards):
            # Each node's cluster bus listens on its port + 10000.
            servers.append(start_redis(binary, *cluster_args, below=55_000))
        addresses = [f"127.0.0.1:{s.port}" for s in servers]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0",
             "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = []
            for server in servers:
                client = redis_sync.Redis(port=server.port, decode_responses=True)
                states.append(client.cluster("info")["cluster_state"])
                client.close()
            if all(state == "ok" for state in states):
                return servers
            time.sleep(0.1)
        raise RuntimeError(f"the cluster did not reach state ok: {states}")
    except BaseException:
        for server in servers:
            server.stop()
        raise


def owner_of(servers: list[Server], channel: str) -> Server:
    client = redis_sync.Redis(port=servers[0].port, decode_responses=True)
    slot = int(client.execute_command("CLUSTER", "KEYSLOT", channel))
    for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
        if start <= slot <= end:
            port = int(primary[1])
            client.close()
            return next(s for s in servers if s.port == port)
    raise RuntimeError(f"no shard owns slot {slot}")


def publish_round(
    servers: list[Server], owner: Server, command: str, channel: str, messages: int
) -> dict[str, Any]:
    subscribe = "SSUBSCRIBE" if command == "SPUBLISH" else "SUBSCRIBE"
    subs = Subscribers(owner.port, subscribe, channel, 1)
    clients = {s.port: redis_sync.Redis(port=s.port) for s in servers}
    publisher = clients[owner.port]
    payload = b"E1 " + b"x" * (FRAME_BYTES - 3)
    try:
        time.sleep(0.5)
        before = {port: cpu(c) for port, c in clients.items()}
        for _ in range(messages // 500):
            pipe = publisher.pipeline(transaction=False)
            for _ in range(500):
                pipe.execute_command(command, channel, payload)
            pipe.execute()
        time.sleep(1.0)  # the bus and the subscriber catch up
        after = {port: cpu(c) for port, c in clients.items()}
        # What the shards spend doing nothing over as long: cluster bus pings, cron.
        time.sleep(1.0)
        idle_after = {port: cpu(c) for port, c in clients.items()}
    finally:
        received = subs.stop()
        for client in clients.values():
            client.close()
    rows = []
    for server in servers:
        busy = after[server.port] - before[server.port]
        idle = idle_after[server.port] - after[server.port]
        spent = busy.main - idle.main / idle.at * busy.at
        rows.append(
            {
                "shard": "owner of the slot" if server is owner else "other shard",
                "port": server.port,
                "redis_main_thread_us_per_message": round(max(0.0, spent) / messages * 1e6, 3),
                "idle_main_thread_ms_per_s": round(idle.main / idle.at * 1000, 3),
            }
        )
    others = [
        r["redis_main_thread_us_per_message"] for r in rows if r["shard"] != "owner of the slot"
    ]
    return {
        "command": command,
        "messages": messages,
        "subscriber_delivered_share": round(received[0] / (messages * FRAME_BYTES), 2),
        "shards": rows,
        "other_shard_mean_us_per_message": round(sum(others) / max(len(others), 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default="3,5", help="cluster sizes to run, one after another")
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args()
    binary = redis_binary()
    version = redis_version(binary)
    if int(version.split(".")[0]) < 7:
        raise SystemExit(f"needs Redis >= 7 for SPUBLISH; {binary} is {version}")
    started = time.monotonic()
    channel = RoomKeys("capacity").channel
    clusters = []
    for shards in [int(x) for x in args.shards.split(",")]:
        servers = start_cluster(binary, shards)
        try:
            owner = owner_of(servers, channel)
            rounds = [
                publish_round(servers, owner, command, channel, args.messages)
                for command in ("PUBLISH", "SPUBLISH")
            ]
        finally:
            for server in servers:
                server.stop()
        clusters.append({"shards": shards, "rounds": rounds})
    results = {
        "script": "benchmarks/capacity_cluster_pubsub.py",
        "redis_server": version,
        "note": "Redis's own CPU (INFO cpu, main thread) per message on each shard, not wall-clock",
        "frame_bytes": FRAME_BYTES,
        "clusters": clusters,
        "duration_s": round(time.monotonic() - started, 1),
    }
    path = write_result("capacity-cluster-pubsub", results)
    for row in (r for c in clusters for r in c["rounds"]):
        print(
            len(row["shards"]),
            "shards",
            row["command"],
            json.dumps(row["shards"]),
            "delivered",
            row["subscriber_delivered_share"],
        )
    print(f"wrote {path.relative_to(ROOT)} in {results['duration_s']} s")


if __name__ == "__main__":
    main()
