"""The chat scenarios of tests/scenarios/test_on_redis_cluster.py through real ``runnode``
processes with REDIS_URL = a real Sentinel set-up (a master, a replica, three sentinels): a
client resumes after a reconnect, the room heals after SIGKILL of its owner node, a SIGTERM drain
hands off cleanly; and the nodes carry on through a Sentinel fail-over of the master (Redis's own
fail-over under load, with the history checker: test_redis_failover_under_load.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.connection import sync_redis
from tests.scenarios import test_on_redis_cluster as on_cluster
from tests.support.client import ChatClient
from tests.support.nodes import Cluster
from tests.support.sentinel_topology import SentinelTopology

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def sentinel_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    topology = SentinelTopology(tmp_path_factory.mktemp("sentinel")).start()
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture
def nodes_on_sentinel(sentinel_topology: SentinelTopology, tmp_path: Path) -> Iterator[Cluster]:
    client = sync_redis(sentinel_topology.url)  # through the sentinels, as the nodes connect
    client.flushall()  # every test starts from no keys (the topology is the module's)
    client.close()
    nodes = Cluster(sentinel_topology.url, tmp_path, CHAT_LEASE_TTL_MS=str(on_cluster.TTL_MS))
    try:
        yield nodes
    finally:
        nodes.close()


async def test_two_nodes_chat_through_sentinel(nodes_on_sentinel: Cluster) -> None:
    nodes_on_sentinel.create_room("lobby")
    a, b = nodes_on_sentinel.add("a"), nodes_on_sentinel.add("b")
    alice, bob = ChatClient(a.ws, "lobby", "alice"), ChatClient(b.ws, "lobby", "bob")
    await alice.connect()
    await bob.connect()
    for i in range(5):
        await alice.send(f"alice {i}")
        await bob.send(f"bob {i}")
    for client in (alice, bob):
        await client.wait_for(lambda c=client: len(c.durable) == 10 and len(c.acks) == 5)
    assert [f["seq"] for f in alice.durable] == list(range(1, 11))
    assert alice.durable == bob.durable
    await alice.close()
    await bob.close()


async def test_resume_after_reconnect(
    nodes_on_sentinel: Cluster, sentinel_topology: SentinelTopology
) -> None:
    await on_cluster.test_resume_after_reconnect(nodes_on_sentinel, sentinel_topology)  # type: ignore[arg-type]


async def test_sigkill_of_the_owner_heals_within_the_lease(
    nodes_on_sentinel: Cluster, sentinel_topology: SentinelTopology
) -> None:
    await on_cluster.test_sigkill_of_the_owner_heals_within_the_lease(
        nodes_on_sentinel,
        sentinel_topology,  # type: ignore[arg-type]
    )


async def test_sigterm_drains_and_the_room_goes_on_elsewhere(
    nodes_on_sentinel: Cluster, sentinel_topology: SentinelTopology
) -> None:
    await on_cluster.test_sigterm_drains_and_the_room_goes_on_elsewhere(
        nodes_on_sentinel,
        sentinel_topology,  # type: ignore[arg-type]
    )
