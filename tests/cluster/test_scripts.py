"""Each Lua script against a real Redis, including the races it exists to settle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from cluster import keys, scripts
from cluster.errors import Fenced
from cluster.keys import RoomKeys
from cluster.log import AppendResult, RoomClosed, RoomLog, Unreserved
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


async def append_as(
    log: RoomLog, lease_epoch: int, body: str, *, reservation: int | None = None, **extra: object
) -> AppendResult:
    return await log.append(
        "r", node="n1", epoch=lease_epoch, seq_floor=0, event=message(body),
        user="u", client_id=f"c-{body}", reservation=reservation, **extra,  # type: ignore[arg-type]
    )  # fmt: skip


async def test_the_reservation_is_written_with_the_append_and_never_lowered(redis: Redis) -> None:
    log = RoomLog(redis, history_limit=100, dedupe_ttl_s=60)
    lease = await RoomRegistry(redis, "n1").claim("r")
    assert await log.seq_state("r") == (0, 0)
    await append_as(log, lease.epoch, "a", reservation=100)
    assert await log.seq_state("r") == (1, 100)
    await append_as(log, lease.epoch, "b", reservation=50)  # an older block: never lowers
    assert await log.seq_state("r") == (2, 100)
    await append_as(log, lease.epoch, "c")  # unreserved append (no database): leaves it
    assert await log.seq_state("r") == (3, 100)


async def test_an_append_above_its_reservation_is_refused_and_writes_nothing(
    redis: Redis,
) -> None:
    log = RoomLog(redis, history_limit=100, dedupe_ttl_s=60)
    lease = await RoomRegistry(redis, "n1").claim("r")
    await append_as(log, lease.epoch, "a", reservation=2)
    await append_as(log, lease.epoch, "b", reservation=2)
    with pytest.raises(Unreserved) as refused:
        await append_as(log, lease.epoch, "c", reservation=2)
    assert refused.value.next_seq == 3
    await log.raise_seq_floor("r", 40)  # a recovery elsewhere moved the counter on
    with pytest.raises(Unreserved) as refused:
        await append_as(log, lease.epoch, "c", reservation=12)
    assert refused.value.next_seq == 41
    assert await redis.xlen(RoomKeys("r").log) == 2
    assert await log.seq_state("r") == (40, 2)
    assert await log.find_applied("r", "u", "c-c") is None  # not applied: no dedupe entry
    done = await append_as(log, lease.epoch, "c", reservation=140)
    assert done.seq == 41 and await log.seq_state("r") == (41, 140)


async def test_a_refused_reservation_never_hides_a_duplicate(redis: Redis) -> None:
    log = RoomLog(redis, history_limit=100, dedupe_ttl_s=60)
    lease = await RoomRegistry(redis, "n1").claim("r")
    first = await append_as(log, lease.epoch, "a", reservation=1)
    again = await append_as(log, lease.epoch, "a", reservation=1)  # re-send: its old answer
    assert (again.seq, again.duplicate) == (first.seq, True)


async def test_find_applied_answers_a_re_send_with_its_first_ack(redis: Redis) -> None:
    log = RoomLog(redis, history_limit=100, dedupe_ttl_s=60)
    lease = await RoomRegistry(redis, "n1").claim("r")
    assert await log.find_applied("r", "u", "c-a") is None
    first = await append_as(log, lease.epoch, "a")
    found = await log.find_applied("r", "u", "c-a")
    assert found == AppendResult(seq=first.seq, id=first.id, duplicate=True)
    assert await log.find_applied("r", "v", "c-a") is None  # another principal's command
    edit = await log.append(
        "r", node="n1", epoch=lease.epoch, seq_floor=0, user="u", client_id="e1",
        event={"type": "edit", "room": "r", "id": "m1", "user": "u", "body": "x", "ts": 1},
        event_id="m1",
    )  # fmt: skip
    assert await log.find_applied("r", "u", "e1") == AppendResult(edit.seq, "m1", True)


async def test_message_and_whether_it_was_deleted_in_one_round_trip(redis: Redis) -> None:
    log = RoomLog(redis, history_limit=10_000, dedupe_ttl_s=60)
    lease = await RoomRegistry(redis, "n1").claim("r")
    for i in range(3):
        await append_as(log, lease.epoch, f"b{i}")
    edit = {"type": "edit", "room": "r", "id": "m2", "user": "u", "body": "new", "ts": 2}
    await log.append(
        "r", node="n1", epoch=lease.epoch, seq_floor=0, event=edit, user="u",
        client_id="e", event_id="m2",
    )  # fmt: skip
    delete = {"type": "delete", "room": "r", "id": "m1", "user": "u", "ts": 3}
    await log.append(
        "r", node="n1", epoch=lease.epoch, seq_floor=0, event=delete, user="u",
        client_id="d", event_id="m1",
    )  # fmt: skip
    original, deleted = await log.message("r", "m1")
    assert original is not None and original["body"] == "b0" and deleted
    original, deleted = await log.message("r", "m2")
    assert original is not None and original["body"] == "b1" and not deleted
    assert await log.message("r", "m4") == (None, False)  # seq 4 is the edit, not a message
    for unknown in ("m99", "m0", "m²", "x1", "m" + "9" * 19, ""):
        assert await log.message("r", unknown) == (None, False)
    # O(1): the answer costs the same Redis calls however long the log has grown since.
    before = int((await redis.info("stats"))["total_commands_processed"])
    await log.message("r", "m1")
    after = int((await redis.info("stats"))["total_commands_processed"])
    assert after - before <= 3  # XRANGE, ZSCORE (+ the INFO itself)


async def test_deleted_set_forgets_messages_trimmed_from_the_log(redis: Redis) -> None:
    log = RoomLog(redis, history_limit=100, dedupe_ttl_s=60)
    lease = await RoomRegistry(redis, "n1").claim("r")
    delete = {"type": "delete", "room": "r", "id": "m1", "user": "u", "ts": 3}
    await append_as(log, lease.epoch, "first")
    await log.append(
        "r", node="n1", epoch=lease.epoch, seq_floor=0, event=delete, user="u",
        client_id="d1", event_id="m1",
    )  # fmt: skip
    assert await redis.zscore(RoomKeys("r").deleted, "m1") == 1
    for i in range(400):
        await append_as(log, lease.epoch, f"x{i}")
    last = await log.last_seq("r")
    await log.append(
        "r", node="n1", epoch=lease.epoch, seq_floor=0, user="u", client_id="d2",
        event={**delete, "id": f"m{last}"}, event_id=f"m{last}",
    )  # fmt: skip
    assert await redis.zrange(RoomKeys("r").deleted, 0, -1) == [f"m{last}"]


async def test_read_reports_holes_inside_the_kept_range(redis: Redis) -> None:
    log = RoomLog(redis, history_limit=1000, dedupe_ttl_s=60)
    lease = await RoomRegistry(redis, "n1").claim("r")
    for i in range(5):
        await append_as(log, lease.epoch, f"a{i}")
    await log.raise_seq_floor("r", 200)  # recovery after a loss: 6..200 are gone
    for i in range(3):
        await append_as(log, lease.epoch, f"b{i}")
    page = await log.read("r", after=2)
    assert [e["seq"] for e in page.events] == [3, 4, 5, 201, 202, 203]
    assert page.missing == [(6, 200)] and page.upto == 203 and page.first_available == 1
    page = await log.read("r", after=100)
    assert [e["seq"] for e in page.events] == [201, 202, 203] and page.missing == [(101, 200)]
    page = await log.read("r", after=2, limit=2)  # a full page ends at its last event
    assert page.missing == [] and page.upto == 4
    whole = await log.read_all("r", after=0, until=201)
    assert whole.missing == [(6, 200)] and whole.upto == 201
    assert [e["seq"] for e in whole.events] == [1, 2, 3, 4, 5, 201]


async def test_read_reports_a_lost_tail_and_a_trimmed_head(redis: Redis) -> None:
    log = RoomLog(redis, history_limit=1000, dedupe_ttl_s=60)
    lease = await RoomRegistry(redis, "n1").claim("r")
    for i in range(5):
        await append_as(log, lease.epoch, f"a{i}")
    await log.raise_seq_floor("r", 9)  # recovered, nothing appended since
    page = await log.read("r", after=3)
    assert [e["seq"] for e in page.events] == [4, 5]
    assert page.missing == [(6, 9)] and page.upto == 9
    await redis.xtrim(RoomKeys("r").log, minid="3-0", approximate=False)
    page = await log.read("r", after=0)
    assert page.first_available == 3 and page.missing == [(1, 2), (6, 9)]
    empty = await log.read("r", after=9)
    assert empty.events == [] and empty.missing == [] and empty.upto == 9
    assert (await log.read_all("r", after=9, until=50)).upto == 9


async def test_reads_racing_appends_never_see_a_false_hole(redis_url: str) -> None:
    writer = Redis.from_url(redis_url, decode_responses=True)
    reader = Redis.from_url(redis_url, decode_responses=True)
    try:
        write_log = RoomLog(writer, history_limit=10_000, dedupe_ttl_s=60)
        read_log = RoomLog(reader, history_limit=10_000, dedupe_ttl_s=60)
        lease = await RoomRegistry(writer, "n1").claim("r")

        async def append_many() -> None:
            for i in range(300):
                await append_as(write_log, lease.epoch, f"r{i}")

        appending = asyncio.create_task(append_many())
        reads = 0
        while not appending.done() or reads == 0:
            page = await read_log.read("r", after=0, limit=1000)
            assert page.missing == [], page.missing
            reads += 1
        await appending
        assert reads > 1
    finally:
        await writer.aclose()
        await reader.aclose()
