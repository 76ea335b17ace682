"""Short versions of the Redis faults: restarted with its append-only file (nothing acked may
be lost), restarted empty (loss detected: seqs never reused, ``gap`` to resumers), and a real
replica promoted while it lags."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.chaos import faults
from tests.chaos.harness import one_fault

pytestmark = [pytest.mark.cluster]


async def test_redis_restarted_with_aof_loses_nothing_acked(
    make_world: Callable[..., Any],
) -> None:
    world = await make_world(nodes=2)
    report = await one_fault(world, lambda: faults.restart_redis(world, keep_data=True))
    assert report.ok, report.summary()
    assert report.counts["acked_lost_allowed"] == 0


async def test_redis_restarted_empty_never_reuses_a_seq(make_world: Callable[..., Any]) -> None:
    world = await make_world(nodes=2)
    report = await one_fault(world, lambda: faults.restart_redis(world, keep_data=False))
    assert report.ok, report.summary()


async def test_lagging_replica_promoted_never_reuses_a_seq(
    make_world: Callable[..., Any],
) -> None:
    world = await make_world(nodes=2, proxy=True, replica=True)
    report = await one_fault(world, lambda: faults.promote_lagging_replica(world, lag_s=1.5))
    assert report.ok, report.summary()
