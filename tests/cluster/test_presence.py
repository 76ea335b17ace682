"""Presence across nodes: one entry per user however many tabs; no ghosts after a restart."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cluster.config import ClusterConfig
from cluster.runtime import ClusterRuntime

pytestmark = pytest.mark.asyncio


class Tab:
    def __init__(self, user: str) -> None:
        self.user = user
        self.frames: list[dict[str, Any]] = []

    def deliver(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)


def node(name: str, url: str) -> ClusterRuntime:
    return ClusterRuntime(ClusterConfig(name, lease_ttl_ms=900), url)


async def test_restart_under_the_same_name_leaves_no_ghosts(redis_url: str) -> None:
    a, b = node("a", redis_url), node("b", redis_url)
    await a.start()
    await b.start()
    ghost = Tab("ghost")
    await a.attach("room", ghost)
    watcher = Tab("watcher")
    seen = await b.attach("room", watcher)
    assert seen.users == ["ghost", "watcher"]
    # "a" dies without a goodbye and comes back under the same name before anyone noticed.
    await a.membership._tasks.stop()
    await a.hub.stop()
    await a.redis.aclose()
    again = node("a", redis_url)
    await again.start()
    try:
        assert (await again.online(["room"]))["room"] == ["watcher"]
        async with asyncio.timeout(5):
            while {"type": "presence_diff", "joins": [], "leaves": ["ghost"]} not in watcher.frames:
                await asyncio.sleep(0.01)
    finally:
        await again.stop()
        await b.stop()


async def test_one_user_many_tabs_counts_once(redis_url: str) -> None:
    a, b = node("a", redis_url), node("b", redis_url)
    await a.start()
    await b.start()
    try:
        tabs = [Tab("ann"), Tab("ann")]
        await a.attach("room", tabs[0])
        await b.attach("room", tabs[1])
        assert (await a.online(["room"]))["room"] == ["ann"]
        await a.detach("room", tabs[0])
        assert (await a.online(["room"]))["room"] == ["ann"]
        await b.detach("room", tabs[1])
        assert (await a.online(["room"]))["room"] == []
    finally:
        await a.stop()
        await b.stop()
