"""CHAT_REDIS_MIN_REPLICAS: an ack waits for replicas (WAIT on the write's own connection).

A real master and replica (tests/support/sentinel_topology.py, no sentinels here), in-process
runtimes. The replica is read directly to show what it held at ack time; SIGSTOP makes it stop
acknowledging without the master noticing a broken link (what a slow or wedged replica does).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from cluster.commands import Command
from cluster.config import ClusterConfig
from cluster.errors import CommandError, ReplicasBehind
from cluster.keys import RoomKeys
from cluster.replication import ReplicaWait
from cluster.runtime import ClusterRuntime
from tests.support.cluster_plugin import redis_cluster, redis_cluster_session  # noqa: F401
from tests.support.redis_cluster_topology import RedisClusterTopology
from tests.support.sentinel_topology import SentinelTopology

ROOT = Path(__file__).resolve().parents[2]
SEND_TIMEOUT_MS = 1200


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[SentinelTopology]:
    """A master and one replica, no sentinels."""
    topology = SentinelTopology(tmp_path, replicas=1, sentinels=0).start()
    try:
        yield topology
    finally:
        topology.stop()


def make(url: str, *, min_replicas: int) -> ClusterRuntime:
    config = ClusterConfig(
        "a",
        lease_ttl_ms=1500,
        send_timeout_ms=SEND_TIMEOUT_MS,
        rate_limit=(1000, 1.0),
        min_replicas=min_replicas,
    )
    return ClusterRuntime(config, url)


@pytest.fixture
async def node(pair: SentinelTopology) -> AsyncIterator[ClusterRuntime]:
    runtime = make(pair.master_url, min_replicas=1)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


def send(client_id: str, body: str = "hi") -> Command:
    return Command("send", "ann", client_id, body=body)


def wait_calls(topology: SentinelTopology) -> int:
    stats: dict[str, Any] = topology.master.client().info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


async def test_an_ack_means_the_replica_has_the_event(
    pair: SentinelTopology, node: ClusterRuntime
) -> None:
    replica = pair.replicas[0].client()
    k = RoomKeys("lobby")
    for i in range(1, 6):
        ack = await node.submit("lobby", send(f"c{i}", f"message {i}"))
        # Read on the replica right at the ack: no waiting, no polling.
        held = replica.xrange(k.log, f"{ack.seq}-0", f"{ack.seq}-0")
        assert held, f"seq {ack.seq} acked but not on the replica"
        assert f"message {i}" in held[0][1]["e"]
    # The lease (and the epoch it carries) reached the replica before the first append.
    lease = node.registry.highest_epoch_seen["lobby"]
    assert int(replica.hget(k.lease, "epoch") or 0) == lease
    assert int(replica.get(k.epoch) or 0) >= lease
    assert wait_calls(pair) >= 6  # one claim and five appends


async def test_a_stopped_replica_gets_unavailable_and_the_resend_acks_the_same_seq(
    pair: SentinelTopology, node: ClusterRuntime
) -> None:
    await node.submit("lobby", send("warm-up"))  # the room is claimed while the replica answers
    master, k = pair.master.client(), RoomKeys("lobby")
    loop = asyncio.get_running_loop()
    pair.pause_replica()
    try:
        started = loop.time()
        with pytest.raises(CommandError) as refused:
            await node.submit("lobby", send("c1", "not yet safe"))
        took = loop.time() - started
        assert refused.value.code == "unavailable"
        assert took < SEND_TIMEOUT_MS / 1000 + 1.0, took  # guarantee 9
        # The append is on the master, unacked: a re-send must not be acked while the replica
        # still lacks it (the dedupe answer waits for the replica too).
        (entry,) = master.xrevrange(k.log, count=1)
        assert "not yet safe" in entry[1]["e"]
        seq = int(entry[0].split("-")[0])
        with pytest.raises(CommandError):
            await node.submit("lobby", send("c1", "not yet safe"))
    finally:
        pair.resume_replica()
    ack = await node.submit("lobby", send("c1", "not yet safe"))
    assert ack.seq == seq and ack.duplicate
    assert pair.replicas[0].client().xrange(k.log, f"{seq}-0", f"{seq}-0")
    assert len(master.xrange(k.log)) == 2  # the warm-up and c1, once
    after = await node.submit("lobby", send("c2"))
    assert after.seq == seq + 1


async def test_a_claim_waits_for_the_replica(pair: SentinelTopology, node: ClusterRuntime) -> None:
    pair.pause_replica()
    try:
        with pytest.raises(CommandError) as refused:
            await node.submit("fresh", send("c1"))
        assert refused.value.code == "unavailable"
    finally:
        pair.resume_replica()
    ack = await node.submit("fresh", send("c1"))
    epoch = int(pair.replicas[0].client().hget(RoomKeys("fresh").lease, "epoch") or 0)
    assert epoch == node.registry.highest_epoch_seen["fresh"]
    assert ack.seq >= 1


async def test_confirm_covers_a_write_made_on_another_connection(pair: SentinelTopology) -> None:
    """A dedupe hit answers from a key written earlier, perhaps on another connection: WAIT on
    the reading connection alone would not cover it (on Redis 7 a fresh connection's WAIT
    returns at once)."""
    client = redis.asyncio.Redis.from_url(pair.master_url, decode_responses=True)
    waiter = ReplicaWait(client, min_replicas=1, timeout_ms=300)
    writer = pair.master.client()
    try:
        pair.pause_replica()
        try:
            writer.set("answer", "7 m7", ex=60)
            with pytest.raises(ReplicasBehind):
                await waiter.confirm("answer")
        finally:
            pair.resume_replica()
        # The resumed replica first works through what queued while it was stopped: on a busy
        # box that can take longer than one 300 ms WAIT (seen in CI), so confirm is retried as
        # the router retries a command, within a bound.
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            try:
                await waiter.confirm("answer")
                break
            except ReplicasBehind:
                assert asyncio.get_running_loop().time() < deadline, "the replica never caught up"
        assert pair.replicas[0].client().get("answer") == "7 m7"
        assert 50 < int(pair.master.client().ttl("answer")) <= 60  # the TTL is kept
    finally:
        await client.aclose()


async def test_min_replicas_zero_sends_no_wait(pair: SentinelTopology) -> None:
    runtime = make(pair.master_url, min_replicas=0)
    await runtime.start()
    try:
        pair.master.client().config_resetstat()
        for i in range(5):
            await runtime.submit("lobby", send(f"c{i}"))
        await runtime.submit("lobby", send("c0"))  # a duplicate too
        assert wait_calls(pair) == 0
    finally:
        await runtime.stop()


def test_config_refuses_a_negative_count() -> None:
    with pytest.raises(ValueError, match="min_replicas"):
        ClusterConfig("a", min_replicas=-1)
    assert ClusterConfig("a").min_replicas == 0
    assert ClusterConfig("a", send_timeout_ms=5000).replica_wait_ms == 1000
    assert ClusterConfig("a", send_timeout_ms=2000).replica_wait_ms == 500
    assert ClusterConfig("a", send_timeout_ms=100).replica_wait_ms == 50


@pytest.mark.parametrize("value", ["-1", "two", "1.5", "0x1"])
def test_malformed_setting_stops_the_process_naming_it(value: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CHAT_REDIS_MIN_REPLICAS": value,
        "CHAT_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
    }
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "CHAT_REDIS_MIN_REPLICAS" in result.stderr


def test_setting_reaches_the_cluster_config() -> None:
    from django.conf import settings

    from rooms.runtime import config_from_settings

    assert settings.CHAT_REDIS_MIN_REPLICAS == 0
    assert config_from_settings().min_replicas == 0
    assert config_from_settings(min_replicas=2).min_replicas == 2


# -- Redis Cluster: WAIT on the slot's master, through the cluster client -------------------


def replica_reader(port: int) -> redis.Redis:
    """A client for a cluster replica that may read there (READONLY on its one connection)."""
    reader = redis.Redis(port=port, decode_responses=True, single_connection_client=True)
    reader.execute_command("READONLY")
    return reader


async def test_on_a_redis_cluster_the_wait_follows_the_write_to_its_slot_master(
    redis_cluster: RedisClusterTopology,  # noqa: F811
) -> None:
    k = RoomKeys("lobby")
    master = redis_cluster.master_for_key(k.log)
    (replica,) = redis_cluster.replicas_of(master)
    reader = replica_reader(replica)
    for port in redis_cluster.masters():
        redis_cluster.client(port).config_resetstat()
    runtime = make(redis_cluster.url, min_replicas=1)
    await runtime.start()
    try:
        assert await runtime.replicas.warn_if_short() == 1  # every master has its replica
        for i in range(1, 4):
            ack = await runtime.submit("lobby", send(f"c{i}", f"message {i}"))
            assert reader.xrange(k.log, f"{ack.seq}-0", f"{ack.seq}-0"), f"seq {ack.seq}"
        stopped = redis_cluster.nodes[replica].process
        stopped.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(CommandError) as refused:
                await runtime.submit("lobby", send("c4", "not yet safe"))
            assert refused.value.code == "unavailable"
        finally:
            stopped.send_signal(signal.SIGCONT)
        ack = await runtime.submit("lobby", send("c4", "not yet safe"))
        assert ack.duplicate and ack.seq == 4
        assert reader.xrange(k.log, "4-0", "4-0")
        # WAIT ran on the room's master only: the other masters never saw one.
        for port in redis_cluster.masters():
            stats = redis_cluster.client(port).info("commandstats")
            calls = int(stats.get("cmdstat_wait", {}).get("calls", 0))
            assert (calls > 0) == (port == master), (port, master, calls)
    finally:
        await runtime.stop()
        reader.close()


async def test_a_node_warns_at_start_when_replicas_are_missing(
    pair: SentinelTopology, caplog: pytest.LogCaptureFixture
) -> None:
    pair.replicas[0].kill()
    master = pair.master.client()
    for _ in range(100):  # the master notices the replica's link went down
        if int(master.info("replication")["connected_slaves"]) == 0:
            break
        await asyncio.sleep(0.05)
    runtime = make(pair.master_url, min_replicas=1)
    with caplog.at_level("WARNING", logger="cluster.replication"):
        await runtime.start()
    try:
        assert "CHAT_REDIS_MIN_REPLICAS=1 but a master has 0 replica(s)" in caplog.text
    finally:
        await runtime.stop()
    assert await ReplicaWait(runtime.redis, min_replicas=0, timeout_ms=1).warn_if_short() is None
