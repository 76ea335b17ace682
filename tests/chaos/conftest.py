from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.world import Settings, World


@pytest.fixture
async def make_world(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start a world of our own (its own Redis, never the session's); ended after the test."""
    worlds: list[World] = []

    async def make(**settings: Any) -> World:
        world = World(tmp_path, Settings(**settings))
        worlds.append(world)
        return await world.start()

    yield make
    for world in worlds:
        await world.close()
