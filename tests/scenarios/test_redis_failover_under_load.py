"""A real Sentinel fail-over under load, with and without ``CHAT_REDIS_MIN_REPLICAS``.

Two ``runnode`` processes reach Redis through ``redis+sentinel://`` (a master, one replica,
three sentinels: tests/support/sentinel_topology.py); recording clients send through both
(tests/chaos: the recorder, the harness's ``one_fault`` and the history checker). The fault:
the replica's feed is held back (its proxy forwards nothing) while the load goes on, then the
master is SIGKILLed; the sentinels promote the replica, which never got the held writes, and
the killed master comes back empty as the new master's replica.

The same on a Redis Cluster (the session's 3 masters + 3 replicas, tests/support/cluster_plugin):
the replica of the shard that holds the busy room is cut off (its master link fails to
authenticate, so nothing it missed waits in a socket buffer), then that shard's master is
SIGKILLed; the cluster promotes the replica and the old master rejoins as its replica.

- ``CHAT_REDIS_MIN_REPLICAS=1``: an append is acked only once the replica has it, so nothing
  acked is lost: what the fail-over loses was never acked (it was answered ``unavailable`` and
  re-sent). The checker finds no acked event missing.
- ``CHAT_REDIS_MIN_REPLICAS=0``: acks during the hold are lost with the master. That is allowed
  (guarantee 8) but never silent: the checker passes only if every hole is announced with
  ``gap`` and no seq is reused; the test reports how many acked events went.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from cluster.keys import RoomKeys
from tests.chaos.checker import Loss, Report
from tests.chaos.faults import REPLICATION_SLACK_S
from tests.chaos.harness import one_fault
from tests.chaos.recorder import now
from tests.chaos.world import Settings, World, prepare_template
from tests.support.cluster_plugin import redis_cluster, redis_cluster_session  # noqa: F401
from tests.support.redis_cluster_topology import RedisClusterTopology, wait_until
from tests.support.sentinel_topology import SentinelTopology

pytestmark = [pytest.mark.cluster]

LAG_S = 1.0  # how long the replica's feed is held before the master dies: ~10 acks at this load


class SentinelRedis:
    """What World expects of its Redis (``start``, ``url``, ``kill``), backed by a whole
    Sentinel topology: the nodes get the ``redis+sentinel://`` URL."""

    def __init__(self, topology: SentinelTopology) -> None:
        self.topology = topology

    def start(self) -> SentinelRedis:
        self.topology.start()
        return self

    @property
    def url(self) -> str:
        return self.topology.url

    def kill(self) -> None:
        self.topology.stop()


class SentinelWorld(World):
    """The chaos World, with Sentinel (and its replica) instead of a single Redis."""

    def __init__(self, tmp: Path, settings: Settings) -> None:
        super().__init__(tmp, settings)
        self.topology = SentinelTopology(tmp / "redis", proxied_replication=True)

    def _new_redis(self, replicaof: int | None = None) -> Any:
        return SentinelRedis(self.topology)


async def fail_over_losing_the_lag(world: SentinelWorld) -> str:
    topology = world.topology
    world.note(f"replica feed held back for {LAG_S:.1f}s")
    held_from = now()
    await asyncio.to_thread(topology.hold_replication)
    await asyncio.sleep(LAG_S)
    killed = now()
    world.note("SIGKILL the master")
    old = await asyncio.to_thread(topology.kill_master)
    new = await asyncio.to_thread(topology.wait_failover, old.port, 30.0)
    world.note(f"sentinels promoted the replica on port {new.port} (took {now() - killed:.1f}s)")
    # What the replica had not received is gone: everything since the hold (and a little
    # before: replication is a few milliseconds behind when healthy).
    world.losses.append(Loss(killed, since=held_from - REPLICATION_SLACK_S, through=now()))
    await asyncio.to_thread(topology.rejoin_old_master)
    world.note("the old master rejoined, empty, as the new master's replica")
    return "sentinel fail-over"


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Path:
    return prepare_template(tmp_path_factory.mktemp("failover-template"), ("lobby",), redis_server)


def world_settings(template_db: Path, min_replicas: int) -> Settings:
    return Settings(
        nodes=2,
        template_db=template_db,
        env={
            "CHAT_REDIS_MIN_REPLICAS": str(min_replicas),
            # The database archive would write back what it archived before the fail-over
            # (cluster.history): a second net, kept out of the way here so that the test sees
            # what Redis's replication alone keeps.
            "CHAT_ARCHIVE_LAG_S": "600",
        },
    )


@pytest.fixture
async def make_world(tmp_path: Path, template_db: Path) -> AsyncIterator[Callable[..., Any]]:
    worlds: list[World] = []

    async def make(min_replicas: int) -> SentinelWorld:
        world = SentinelWorld(tmp_path, world_settings(template_db, min_replicas))
        worlds.append(world)
        await world.start()
        return world

    yield make
    for world in worlds:
        await world.close()


def acked_lost(report: Report) -> int:
    return report.counts["acked_lost"] + report.counts["acked_lost_allowed"]


async def test_sentinel_failover_loses_nothing_acked_with_min_replicas_1(
    make_world: Callable[..., Any],
) -> None:
    world = await make_world(1)
    report = await one_fault(world, lambda: fail_over_losing_the_lag(world))
    print(f"CHAT_REDIS_MIN_REPLICAS=1: acked events lost in the fail-over: {acked_lost(report)}")
    assert report.ok, report.summary()
    assert acked_lost(report) == 0, report.summary()


async def test_sentinel_failover_loss_is_announced_with_min_replicas_0(
    make_world: Callable[..., Any],
) -> None:
    world = await make_world(0)
    report = await one_fault(world, lambda: fail_over_losing_the_lag(world))
    lost = acked_lost(report)
    print(f"CHAT_REDIS_MIN_REPLICAS=0: acked events lost in the fail-over: {lost}")
    # Guarantee 8: a loss, but no reused seq, no silent hole (resumers got ``gap``).
    assert report.ok, report.summary()
    # The feed was held for a second under load: acks were lost, and the check saw them go.
    assert lost > 0, report.summary()
    assert report.counts["gaps"] > 0, report.summary()


# -- the same on a Redis Cluster: the shard that holds the busy room fails over ---------------


class ClusterRedis:
    """What World expects of its Redis, for the session's Redis Cluster (which the fixture
    owns: ``kill`` leaves it running; the next test's fixture heals and empties it)."""

    def __init__(self, topology: RedisClusterTopology) -> None:
        self.topology = topology

    def start(self) -> ClusterRedis:
        return self

    @property
    def url(self) -> str:
        return self.topology.url

    def kill(self) -> None:
        pass


class ClusterWorld(World):
    def __init__(self, tmp: Path, settings: Settings, topology: RedisClusterTopology) -> None:
        super().__init__(tmp, settings)
        self.topology = topology

    def _new_redis(self, replicaof: int | None = None) -> Any:
        return ClusterRedis(self.topology)


def cut_replica_link(topology: RedisClusterTopology, replica: int) -> None:
    """The replica stops receiving: its master link is cut and every reconnect fails (a wrong
    ``masterauth``), while the master goes on taking writes. Unlike SIGSTOP, nothing it missed
    waits in a socket buffer: a fail-over to it really loses what it did not get."""
    client = topology.client(replica)
    client.config_set("masterauth", "not-the-password")
    client.client_kill_filter(_type="master")
    wait_until(
        lambda: client.info("replication").get("master_link_status") == "down",
        10.0,
        f"replica {replica} cut off",
    )


async def shard_fail_over_losing_the_lag(world: ClusterWorld, room: str = "lobby") -> str:
    topology = world.topology
    master = topology.master_for_key(RoomKeys(room).log)
    # A node that rejoined in an earlier test may still carry a stale "fail" flag for a moment.
    (replica,) = await asyncio.to_thread(
        wait_until, lambda: topology.replicas_of(master), 20.0, f"a replica of {master}"
    )
    world.note(f"replica {replica} of {room}'s shard master {master} cut off for {LAG_S:.1f}s")
    held_from = now()
    await asyncio.to_thread(cut_replica_link, topology, replica)
    await asyncio.sleep(LAG_S)
    killed = now()
    world.note(f"SIGKILL the shard master {master}")
    promoted = await asyncio.to_thread(topology.kill_master, master, 30.0)
    world.note(f"the cluster promoted {promoted} (took {now() - killed:.1f}s)")
    world.losses.append(Loss(killed, since=held_from - REPLICATION_SLACK_S, through=now()))
    await asyncio.to_thread(topology.client(promoted).config_set, "masterauth", "")
    # On this thread, not a worker's: a node is started with PR_SET_PDEATHSIG, which fires when
    # the *thread* that started it ends (a worker thread ends with this test's loop, and the
    # session's cluster would lose the node). It blocks the loop for ~0.1 s (a small resync).
    topology.restart_node(master, 30.0)
    world.note(f"the old master {master} rejoined as a replica")
    return "shard fail-over"


@pytest.fixture
async def make_cluster_world(
    tmp_path: Path,
    template_db: Path,
    redis_cluster: RedisClusterTopology,  # noqa: F811
) -> AsyncIterator[Callable[..., Any]]:
    worlds: list[World] = []

    async def make(min_replicas: int) -> ClusterWorld:
        world = ClusterWorld(tmp_path, world_settings(template_db, min_replicas), redis_cluster)
        worlds.append(world)
        await world.start()
        return world

    yield make
    for world in worlds:
        await world.close()


@pytest.mark.parametrize("min_replicas", [1, 0])
async def test_redis_cluster_shard_failover_under_load(
    make_cluster_world: Callable[..., Any], min_replicas: int
) -> None:
    world = await make_cluster_world(min_replicas)
    report = await one_fault(world, lambda: shard_fail_over_losing_the_lag(world))
    lost = acked_lost(report)
    print(f"Redis Cluster, CHAT_REDIS_MIN_REPLICAS={min_replicas}: acked events lost: {lost}")
    assert report.ok, report.summary()
    if min_replicas:
        assert lost == 0, report.summary()
    else:
        assert lost > 0, report.summary()
        assert report.counts["gaps"] > 0, report.summary()
