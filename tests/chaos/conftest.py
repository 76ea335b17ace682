from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.world import Settings, World, prepare_template


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Path:
    """One migrated database with the room "lobby", copied by every world of the session."""
    return prepare_template(tmp_path_factory.mktemp("chaos-template"), ("lobby",), redis_server)


@pytest.fixture
async def make_world(tmp_path: Path, template_db: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start a world of our own (its own Redis, never the session's); ended after the test."""
    worlds: list[World] = []

    async def make(**settings: Any) -> World:
        world = World(tmp_path, Settings(template_db=template_db, **settings))
        worlds.append(world)
        return await world.start()

    yield make
    for world in worlds:
        await world.close()
