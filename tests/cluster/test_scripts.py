"""Each Lua script against a real Redis, including the races it exists to settle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from cluster import keys, scripts
from cluster.errors import Fenced
from cluster.keys import RoomKeys
from cluster.log import RoomClosed, RoomLog
from cluster.registry import LeaseTaken, RoomRegistry

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def message(body: str) -> dict[str, object]:
    return {"type": "message", "room": "r", "user": "u", "body": body, "ts": 1}


async def test_append_assigns_gapless_seqs_under_its_epoch(redis: Redis) -> None:
    log = RoomLog(redis, history_limit=100, dedupe_ttl_s=60)
    lease = await RoomRegistry(redis, "n1").claim("r")
    results = [
        await log.append(
            "r",
            node="n1",
            epoch=lease.epoch,
            seq_floor=0,
            event=message(str(i)),
            user="u",
            client_id=f"c{i}",
        )
        for i in range(5)
    ]
    assert [r.seq for r in results] == [1, 2, 3, 4, 5]
    assert [r.id for r in results] == ["m1", "m2", "m3", "m4", "m5"]
    page = await log.read("r", after=2)
    assert [e["seq"] for e in page.events] == [3, 4, 5]
    assert page.first_available == 1 and page.last_seq == 5
    writers = {f["w"] for _, f in await redis.xrange(RoomKeys("r").log)}
    assert writers == {f"n1@{lease.epoch}"}


async def test_append_with_a_stale_epoch_is_refused_and_writes_nothing(redis: Redis) -> None:
    log = RoomLog(redis, history_limit=100, dedupe_ttl_s=60)
    old = await RoomRegistry(redis, "n1").claim("r")
    new = await RoomRegistry(redis, "n2").claim("r", presumed_dead="n1")
    assert new.epoch > old.epoch
    with pytest.raises(Fenced) as fenced:
        await log.append(
            "r", node="n1", epoch=old.epoch, seq_floor=0, event=message("late"),
            user="u", client_id="c",
        )  # fmt: skip
    assert fenced.value.owner == "n2"
    assert await redis.xlen(RoomKeys("r").log) == 0
    assert await redis.get(RoomKeys("r").seq) is None
    # The same node with the new owner's epoch but the wrong name is refused too.
    with pytest.raises(Fenced):
        await log.append(
            "r", node="n1", epoch=new.epoch, seq_floor=0, event=message("x"),
            user="u", client_id="d",
        )  # fmt: skip


async def test_dedupe_returns_the_first_seq_and_id(redis: Redis) -> None:
    log = RoomLog(redis, history_limit=100, dedupe_ttl_s=60)
    lease = await RoomRegistry(redis, "n1").claim("r")
    args = {"node": "n1", "epoch": lease.epoch, "seq_floor": 0, "user": "u", "client_id": "c"}
    first = await log.append("r", event=message("a"), **args)  # type: ignore[arg-type]
    again = await log.append("r", event=message("a"), **args)  # type: ignore[arg-type]
    assert (again.seq, again.id, again.duplicate) == (first.seq, first.id, True)
    other_user = {**args, "user": "v"}
    third = await log.append("r", event=message("a"), **other_user)  # type: ignore[arg-type]
    assert third.seq == 2 and not third.duplicate
    assert await redis.xlen(RoomKeys("r").log) == 2


async def test_seq_floor_keeps_seqs_above_what_was_known(redis: Redis) -> None:
    log = RoomLog(redis, history_limit=100, dedupe_ttl_s=60)
    lease = await RoomRegistry(redis, "n1").claim("r")
    result = await log.append(
        "r", node="n1", epoch=lease.epoch, seq_floor=41, event=message("after loss"),
        user="u", client_id="c",
    )  # fmt: skip
    assert result.seq == 42
    page = await log.read("r", after=0)
    assert page.first_available == 42 and page.last_seq == 42
    assert await log.raise_seq_floor("r", 10) == 42  # never lowers
    assert await log.raise_seq_floor("r", 50) == 50


async def test_archived_room_refuses_appends(redis: Redis) -> None:
    log = RoomLog(redis, history_limit=100, dedupe_ttl_s=60)
    lease = await RoomRegistry(redis, "n1").claim("r")
    await redis.set(RoomKeys("r").closed, "1")
    with pytest.raises(RoomClosed):
        await log.append(
            "r", node="n1", epoch=lease.epoch, seq_floor=0, event=message("x"),
            user="u", client_id="c",
        )  # fmt: skip


async def test_history_is_trimmed_to_at_least_the_limit(redis: Redis) -> None:
    log = RoomLog(redis, history_limit=100, dedupe_ttl_s=60)
    lease = await RoomRegistry(redis, "n1").claim("r")
    for i in range(400):
        await log.append(
            "r", node="n1", epoch=lease.epoch, seq_floor=0, event=message(str(i)),
            user="u", client_id=None,
        )  # fmt: skip
    kept = await redis.xlen(RoomKeys("r").log)
    assert 100 <= kept < 400
    page = await log.read("r", after=0, limit=1)
    assert page.first_available == 400 - kept + 1


async def test_two_claimers_race_one_wins(redis: Redis) -> None:
    registries = [RoomRegistry(redis, f"n{i}") for i in range(8)]
    outcomes = await asyncio.gather(*(r.claim("r") for r in registries), return_exceptions=True)
    winners = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(o, LeaseTaken) for o in outcomes if o not in winners)
    assert await redis.hget(RoomKeys("r").lease, "node") == winners[0].node


async def test_take_over_only_from_the_node_presumed_dead(redis: Redis) -> None:
    await RoomRegistry(redis, "n1").claim("r")
    with pytest.raises(LeaseTaken):
        await RoomRegistry(redis, "n3").claim("r", presumed_dead="n2")
    lease = await RoomRegistry(redis, "n3").claim("r", presumed_dead="n1")
    assert lease.node == "n3" and lease.epoch == 2


async def test_epoch_only_grows_across_release_and_reclaim(redis: Redis) -> None:
    registry = RoomRegistry(redis, "n1")
    first = await registry.claim("r")
    assert await registry.release(first)
    second = await registry.claim("r")
    assert second.epoch == first.epoch + 1
    assert not await registry.release(first)  # a stale lease cannot release the new one
    assert await redis.hget(RoomKeys("r").lease, "node") == "n1"


async def test_epoch_floor_survives_a_lost_counter(redis: Redis) -> None:
    registry = RoomRegistry(redis, "n1")
    await registry.claim("r")
    await registry.claim("r")
    await redis.delete(RoomKeys("r").epoch, RoomKeys("r").lease)
    again = await registry.claim("r")
    assert again.epoch == 3


async def test_heartbeat_renew_after_loss_reports_lost(redis: Redis) -> None:
    beat = redis.register_script(scripts.NODE_HEARTBEAT)
    key = keys.node_key("n1")
    assert (await beat(keys=[key], args=["s1", "1000", "register"]))[0] == "ok"
    assert (await beat(keys=[key], args=["s1", "1000", "renew"]))[0] == "ok"
    await redis.delete(key)  # expired while the node was paused
    assert (await beat(keys=[key], args=["s1", "1000", "renew"]))[0] == "lost"
    await beat(keys=[key], args=["s2", "1000", "register"])  # a new incarnation
    assert (await beat(keys=[key], args=["s1", "1000", "renew"]))[0] == "lost"
    assert 0 < await redis.pttl(key) <= 1000
