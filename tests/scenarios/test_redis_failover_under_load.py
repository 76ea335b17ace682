"""A real Sentinel fail-over under load, with and without ``CHAT_REDIS_MIN_REPLICAS``.

Two ``runnode`` processes reach Redis through ``redis+sentinel://`` (a master, one replica,
three sentinels: tests/support/sentinel_topology.py); recording clients send through both
(tests/chaos: the recorder, the harness's ``one_fault`` and the history checker). The fault:
the replica's feed is held back (its proxy forwards nothing) while the load goes on, then the
master is SIGKILLed; the sentinels promote the replica, which never got the held writes, and
the killed master comes back empty as the new master's replica.

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

from tests.chaos.checker import Loss, Report
from tests.chaos.faults import REPLICATION_SLACK_S
from tests.chaos.harness import one_fault
from tests.chaos.recorder import now
from tests.chaos.world import Settings, World, prepare_template
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


@pytest.fixture
async def make_world(tmp_path: Path, template_db: Path) -> AsyncIterator[Callable[..., Any]]:
    worlds: list[World] = []

    async def make(min_replicas: int) -> SentinelWorld:
        settings = Settings(
            nodes=2,
            template_db=template_db,
            env={
                "CHAT_REDIS_MIN_REPLICAS": str(min_replicas),
                # The database archive would write back what it archived before the fail-over
                # (cluster.history): a second net, kept out of the way here so that the test
                # sees what Redis's replication alone keeps.
                "CHAT_ARCHIVE_LAG_S": "600",
            },
        )
        world = SentinelWorld(tmp_path, settings)
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
