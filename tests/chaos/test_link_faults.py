"""Short versions of faults on the link between nodes and Redis, through the TCP proxy: slowed,
reset, black-holed (longer than the lease). Commands are still answered in time (an ack or
``unavailable``), nothing acked is lost, presence converges."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.chaos import faults
from tests.chaos.harness import one_fault

pytestmark = [pytest.mark.cluster]


async def test_redis_slowed(make_world: Callable[..., Any]) -> None:
    world = await make_world(nodes=2, proxy=True)
    report = await one_fault(world, lambda: faults.slow_redis(world, delay_s=0.05, for_s=3.0))
    assert report.ok, report.summary()


async def test_redis_links_reset(make_world: Callable[..., Any]) -> None:
    world = await make_world(nodes=2, proxy=True)
    report = await one_fault(world, lambda: faults.reset_redis_links(world))
    assert report.ok, report.summary()


async def test_redis_black_holed_past_the_lease(make_world: Callable[..., Any]) -> None:
    world = await make_world(nodes=2, proxy=True)
    report = await one_fault(world, lambda: faults.blackhole_redis(world, for_s=4.0))
    assert report.ok, report.summary()
