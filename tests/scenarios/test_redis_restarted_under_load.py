"""Redis goes away under load and comes back: nodes turn unready, keep their sockets, answer
commands with `unavailable`, and recover by themselves; nothing acked is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.embedded import EmbeddedRedis
from tests.scenarios.load import Load, check_invariants, wait_until
from tests.support.client import RoamingClient
from tests.support.nodes import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis.start(tmp_path / "redis", appendonly=True)
    try:
        yield server
    finally:
        server.stop()


async def test_redis_restarted_under_load(own_redis: EmbeddedRedis, tmp_path: Path) -> None:
    cluster = Cluster(
        own_redis.url,
        tmp_path,
        CHAT_LEASE_TTL_MS="1500",
        CHAT_RATE_LIMIT="1000/1",
        CHAT_SEND_TIMEOUT_MS="1000",
    )
    try:
        cluster.create_room("lobby")
        a, b = cluster.add("a"), cluster.add("b")
        clients = [
            RoamingClient([a.ws, b.ws], "lobby", "ann"),
            RoamingClient([b.ws, a.ws], "lobby", "ben"),
        ]
        for client in clients:
            await client.connect()
        load = Load(clients, per_client=50, interval_s=0.05)
        sending = asyncio.create_task(load.run())
        await wait_until(lambda: sum(len(c.acks) for c in clients) >= 20, timeout=20)

        own_redis.stop()  # SIGTERM: Redis writes its append-only file and exits
        await wait_until(lambda: a.get("/readyz")[0] == 503 and b.get("/readyz")[0] == 503, 10)
        # Commands meanwhile get `unavailable` (after CHAT_SEND_TIMEOUT_MS); sockets stay open.
        await wait_until(
            lambda: any(e["code"] == "unavailable" for c in clients for e in c.errors), 10
        )
        assert all(c.current is not None and c.current.connected for c in clients)
        restarted = EmbeddedRedis.start(own_redis.data_dir, port=own_redis.port)
        own_redis.process = restarted.process
        await wait_until(lambda: a.get("/readyz")[0] == 200 and b.get("/readyz")[0] == 200, 15)

        await asyncio.wait_for(sending, 60)
        await load.settle(30)
        check_invariants(a, "lobby", clients)
        assert all(c.current is not None and c.current.connected for c in clients)
        for client in clients:
            await client.close()
    finally:
        cluster.close()
