"""A pub/sub connection that stops answering is noticed and replaced (issue 8, hole 9)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
from redis.asyncio import Redis

from cluster.embedded import EmbeddedRedis
from cluster.hub import PONG_TIMEOUT_S, SILENCE_BEFORE_PING_S, PubSubHub


@pytest.fixture
def own_redis() -> Iterator[str]:
    """A Redis of this test's own: it is paused, which must not stall other tests."""
    server = EmbeddedRedis.start(appendonly=False)
    try:
        yield server.url
    finally:
        server.stop()


async def test_silent_connection_is_detected_and_replaced(own_redis: str) -> None:
    client = Redis.from_url(own_redis, decode_responses=True)
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    hub = PubSubHub(client, on_reconnect=on_reconnect)
    heard: list[str] = []
    await hub.start()
    try:
        await hub.subscribe("ch", heard.append)
        admin = redis.Redis.from_url(own_redis)
        # The server stops answering anyone for a while: to the hub, a half-open connection.
        pause_ms = int((SILENCE_BEFORE_PING_S + PONG_TIMEOUT_S + 2) * 1000)
        admin.execute_command("CLIENT", "PAUSE", str(pause_ms), "ALL")
        admin.close()
        await asyncio.wait_for(reconnected.wait(), pause_ms / 1000 + 10)
        assert hub.half_open_detected >= 1
        # And it delivers again on the new connection.
        await client.publish("ch", "after")
        async with asyncio.timeout(5):
            while "after" not in heard:
                await asyncio.sleep(0.02)
    finally:
        await hub.stop()
        await client.aclose()
