"""Test fixtures: a real Redis server process per session (never a mock), keys flushed per test,
and a real cluster runtime per async test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from django.conf import settings

from cluster.embedded import EmbeddedRedis

# Settings are production's (DEBUG off), but the in-process test client speaks plain http:
# the redirect to https would answer every request 301. Node processes: support/nodes.py.
settings.SECURE_SSL_REDIRECT = False


@pytest.fixture(scope="session", autouse=True)
def _static_files_collected() -> None:
    """Pages name their scripts by hashed name (DEBUG off): collectstatic once per session."""
    from tests.support.static_plugin import collect_static

    collect_static()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The Redis of the session: $TEST_REDIS_URL if set, else an embedded redis-server."""
    named = os.environ.get("TEST_REDIS_URL")
    if named:
        yield named
        return
    server = EmbeddedRedis.start(appendonly=False)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _redis_for_django(redis_server: str) -> Iterator[None]:
    previous = settings.CHAT_REDIS_URL
    settings.CHAT_REDIS_URL = redis_server
    yield
    settings.CHAT_REDIS_URL = previous


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session Redis, emptied: every test starts from no keys."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture
async def runtime(redis_url: str) -> AsyncIterator[object]:
    """A started cluster runtime installed as this process's node (for consumer tests)."""
    from rooms.runtime import build_runtime, install

    # The archiver's background passes would race what these tests assert about the Redis
    # log alone: an hour apart here. Tests of the archive drive it themselves
    # (tests/rooms/test_archive.py); real nodes (tests/support/nodes.py) run it as deployed.
    previous_lag = settings.CHAT_ARCHIVE_LAG_S
    settings.CHAT_ARCHIVE_LAG_S = 3600.0
    rt = build_runtime(redis_url, node_name="test-node", lease_ttl_ms=1500)
    await rt.start()
    install(rt)
    try:
        yield rt
    finally:
        install(None)
        await rt.stop()
        settings.CHAT_ARCHIVE_LAG_S = previous_lag
