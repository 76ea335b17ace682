"""The Redis Cluster test fixture itself: a real 3-master cluster, fail-over, heal."""

from __future__ import annotations

from tests.support.cluster_plugin import redis_cluster, redis_cluster_session  # noqa: F401
from tests.support.redis_cluster_topology import RedisClusterTopology


def test_three_masters_cover_every_slot_with_a_replica_each(
    redis_cluster: RedisClusterTopology,  # noqa: F811
) -> None:
    slot_map = redis_cluster.slot_map()
    assert sum(last - first + 1 for first, last, _m, _r in slot_map) == 16384
    assert len(redis_cluster.masters()) == 3
    assert all(len(replicas) == 1 for _f, _l, _m, replicas in slot_map)
    assert redis_cluster.url.startswith("redis+cluster://127.0.0.1:")


def test_kill_master_promotes_its_replica_and_heal_brings_it_back(
    redis_cluster: RedisClusterTopology,  # noqa: F811
) -> None:
    key = "chat:{room:fixture}:probe"
    master = redis_cluster.master_for_key(key)
    redis_cluster.client(master).set(key, "1")
    redis_cluster.client(master).execute_command("WAIT", 1, 2000)
    promoted = redis_cluster.kill_master(master)
    assert redis_cluster.master_for_key(key) == promoted != master
    assert redis_cluster.client(promoted).get(key) == "1"
    redis_cluster.heal()
    assert master in redis_cluster.replicas_of(promoted)
