"""pytest fixtures for a real Redis Cluster (tests/support/redis_cluster_topology.py).

Not loaded globally: a test module that needs a cluster imports the fixtures it uses::

    from tests.support.cluster_plugin import redis_cluster, redis_cluster_session  # noqa: F401

``redis_cluster_session`` starts 3 masters + 3 replicas once per session, on first use.
``redis_cluster`` hands it to one test healed (nodes a previous test killed are back, as
replicas) and emptied (FLUSHALL on every master).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_cluster_topology import RedisClusterTopology


@pytest.fixture(scope="session")
def redis_cluster_session() -> Iterator[RedisClusterTopology]:
    topology = RedisClusterTopology.start(masters=3, replicas_per_master=1)
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture
def redis_cluster(redis_cluster_session: RedisClusterTopology) -> RedisClusterTopology:
    redis_cluster_session.heal()
    redis_cluster_session.flushall()
    return redis_cluster_session


def needs_redis_7(topology: RedisClusterTopology) -> None:
    """Skip the calling test on a 6.2 cluster (no sharded pub/sub before 7.0)."""
    if topology.version < (7, 0, 0):
        pytest.skip(f"needs Redis 7 (sharded pub/sub); this cluster runs {topology.version}")
