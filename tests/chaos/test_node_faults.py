"""Short versions of the node faults: SIGKILL of an owner and of a non-owner, SIGTERM drain,
SIGSTOP past the lease. Load in the room throughout; the history checker judges."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from tests.chaos import faults
from tests.chaos.harness import one_fault

pytestmark = [pytest.mark.cluster]


def verdict(report: Any, world: Any) -> None:
    assert report.ok, report.summary()
    assert not world.anomalies, world.anomalies


async def test_owner_killed(make_world: Callable[..., Any]) -> None:
    world = await make_world(nodes=2)
    report = await one_fault(world, lambda: faults.kill_owner(world, random.Random(1)))
    verdict(report, world)
    assert report.counts["close_1006"] + report.counts["close_1011"] >= 1  # sockets really died


async def test_non_owner_killed(make_world: Callable[..., Any]) -> None:
    world = await make_world(nodes=2)
    report = await one_fault(world, lambda: faults.kill_non_owner(world, random.Random(1)))
    verdict(report, world)


async def test_owner_drained(make_world: Callable[..., Any]) -> None:
    world = await make_world(nodes=2)

    async def drain() -> str:
        owner = await world.owner_of("lobby")
        assert owner is not None
        return await faults.drain_node(world, owner)

    report = await one_fault(world, drain)
    verdict(report, world)


async def test_owner_paused_past_the_lease(make_world: Callable[..., Any]) -> None:
    world = await make_world(nodes=2)

    async def pause() -> str:
        owner = await world.owner_of("lobby")
        assert owner is not None
        return await faults.pause_node(world, owner, pause_s=world.settings.lease_ms / 1000 * 2)

    report = await one_fault(world, pause)
    verdict(report, world)
