"""Where a room goes on after Redis lost (part of) it: the decision case by case, exhaustively
against a model of the reservation protocol, and its effects on a real Redis."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from cluster.log import RoomLog
from cluster.registry import RoomRegistry
from cluster.seq_recovery import (
    RESERVE_BLOCK,
    Reservation,
    SeqWitness,
    append_reserved,
    nodes_known,
    recover_start,
    start_position,
)

# -- the decision, case by case -------------------------------------------------------------


def decide(
    redis_last: int, redis_reserved: int, db_reserved: int, known: int = 0
) -> tuple[int, bool]:
    p = start_position(
        redis_last=redis_last,
        redis_reserved=redis_reserved,
        db_reserved=db_reserved,
        nodes_known=known,
    )
    assert p.reserved == max(redis_reserved, db_reserved)
    return p.last_seq, p.lost


def test_a_new_room_starts_at_zero() -> None:
    assert decide(0, 0, 0) == (0, False)


def test_a_take_over_with_nothing_lost_continues_where_redis_is() -> None:
    assert decide(150, 200, 200, known=150) == (150, False)
    assert decide(150, 200, 200, known=90) == (150, False)  # a node that lagged
    assert decide(200, 200, 200) == (200, False)  # a block used up exactly


def test_a_lagging_replica_with_the_newest_reservation_is_caught_by_the_nodes() -> None:
    # Hole 5: Redis holds the newest reservation but lost appends a live node saw.
    assert decide(120, 200, 200, known=150) == (200, True)


def test_a_reservation_recorded_but_never_used_loses_no_seqs() -> None:
    # The database write landed, the append under it did not (a crash, a fence).
    assert decide(200, 200, 300) == (200, False)
    assert decide(200, 100, 300, known=200) == (200, False)


def test_an_append_under_the_newest_reservation_that_redis_lost_is_caught_by_the_nodes() -> None:
    assert decide(200, 200, 300, known=201) == (300, True)


def test_redis_that_lost_everything_goes_on_above_the_database_and_the_nodes() -> None:
    # Hole 11: FLUSHALL, or a Redis replaced under the nodes.
    assert decide(0, 0, 1600, known=1500) == (1600, True)
    assert decide(0, 0, 1600) == (1600, True)
    assert decide(0, 0, 1600, known=1700) == (1700, True)  # the database lagged the nodes?
    assert decide(0, 0, 100) == (100, True)  # the first block: made at 0, cannot tell


def test_redis_that_lost_a_block_boundary_goes_on_above_the_database() -> None:
    # The replica has appends of the previous block only: seqs of the newest may be gone.
    assert decide(180, 200, 300) == (300, True)


def test_a_counter_raised_after_a_flush_to_where_the_newest_block_began_is_kept() -> None:
    # The fan-out raised the flushed counter to what it delivered: that block was unused.
    assert decide(1500, 0, 1600, known=1500) == (1500, False)


def test_without_a_database_redis_and_the_nodes_decide() -> None:
    assert decide(500, 0, 0) == (500, False)
    assert decide(500, 600, 0) == (500, False)
    assert decide(0, 0, 0, known=40) == (40, True)


def test_a_planned_hand_off_trusts_redis_when_it_holds_the_owner_s_last_seq() -> None:
    def handed(last: int, r_redis: int, r_db: int, predecessor: int) -> tuple[int, bool]:
        p = start_position(
            redis_last=last, redis_reserved=r_redis, db_reserved=r_db, predecessor_last=predecessor
        )
        return p.last_seq, p.lost

    assert handed(150, 200, 200, 150) == (150, False)
    assert handed(200, 200, 300, 200) == (200, False)  # reserved, unused: no seq skipped
    assert handed(150, 0, 200, 150) == (150, False)  # the counter survived a flush (raised)
    assert handed(120, 200, 200, 150) == (200, True)  # Redis lost the owner's last appends
    assert handed(0, 0, 200, 150) == (200, True)


def test_exhaustive_invariants_over_a_grid() -> None:
    values = range(0, 7)
    predecessors = (None, *values)
    for last, r_redis, r_db, known, pred in itertools.product(
        values, values, values, values, predecessors
    ):
        p = start_position(
            redis_last=last,
            redis_reserved=r_redis,
            db_reserved=r_db,
            nodes_known=known,
            predecessor_last=pred,
            block=2,
        )
        assert p.last_seq >= (pred or 0)
        assert p.last_seq >= max(last, known)  # never backwards, never below a witness
        if p.lost:
            assert p.last_seq >= r_db  # everything possibly issued lies below
        else:
            assert p.last_seq == last and known <= last


# -- against a model of the protocol --------------------------------------------------------


def history(appends: int, *, crash_after_reserving: bool, block: int) -> list[tuple[str, int]]:
    """What a room server does: ("db", R) before a block is used, ("append", R) per event."""
    ops: list[tuple[str, int]] = []
    reserved = 0
    for last in range(appends):
        if last + 1 > reserved:
            reserved = last + block
            ops.append(("db", reserved))
        ops.append(("append", reserved))
    if crash_after_reserving and appends % block == 0:
        ops.append(("db", appends + block))  # reserved, then died before the append
    return ops


def test_no_acked_seq_is_reissued_unless_redis_and_every_witness_lost_it() -> None:
    """Every history, every prefix Redis may keep (replication and the AOF keep prefixes),
    every seq the live nodes may know: the room goes on above everything issued, unless the
    appends Redis lost were seen by no live node (a double fault); and it skips no seq when
    Redis lost nothing."""
    block = 3
    for appends, crash in itertools.product(range(0, 10), (False, True)):
        ops = history(appends, crash_after_reserving=crash, block=block)
        db_reserved = max([r for kind, r in ops if kind == "db"], default=0)
        issued = [r for kind, r in ops if kind == "append"]  # reservation of seq i + 1
        for kept in range(0, appends + 1):  # Redis keeps appends 1..kept
            redis_reserved = max(issued[:kept], default=0)
            for known in range(0, appends + 1):
                p = start_position(
                    redis_last=kept,
                    redis_reserved=redis_reserved,
                    db_reserved=db_reserved,
                    nodes_known=known,
                    block=block,
                )
                case = (appends, crash, kept, known, p)
                if p.last_seq < appends:
                    assert kept < appends and known < appends, case  # only a double fault
                handed = start_position(
                    redis_last=kept,
                    redis_reserved=redis_reserved,
                    db_reserved=db_reserved,
                    predecessor_last=appends,
                    block=block,
                )
                assert handed.last_seq >= appends, case  # a hand-off: the owner knows
                assert handed.lost == (kept < appends), case
                assert handed.lost or handed.last_seq == appends, case
                if kept == appends and appends == 0 and crash:
                    # A room's first block, recorded, unused: indistinguishable from a Redis
                    # that lost a young room with every node; the room starts above the block.
                    assert p.last_seq == block and p.lost, case
                elif kept == appends:
                    assert p.last_seq == appends and not p.lost, case  # no seq skipped


# -- gathering, reserving, recovering on a real Redis ---------------------------------------


async def test_nodes_known_is_the_highest_answer_and_zero_without_answers() -> None:
    async def answers(slug: str) -> list[int]:
        return [3, 17, 5]

    async def silent(slug: str) -> list[int]:
        await asyncio.sleep(10)
        return [99]

    async def broken(slug: str) -> list[int]:
        raise ConnectionError("no RPC")

    assert await nodes_known("r", answers, 1.0) == 17
    assert await nodes_known("r", silent, 0.05) == 0
    assert await nodes_known("r", broken, 1.0) == 0
    assert await nodes_known("r", None, 1.0) == 0


def test_a_witness_remembers_the_highest_seq_per_room() -> None:
    witness = SeqWitness()
    for seq in (3, 9, 4):
        witness.observe("r", seq)
    assert witness.known("r") == 9 and witness.known("other") == 0
    witness.forget("r")
    assert witness.known("r") == 0


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


class Database:
    """The database hooks, in memory: the reservation only grows."""

    def __init__(self) -> None:
        self.reserved: dict[str, int] = {}
        self.writes = 0

    async def load(self, slug: str) -> int:
        return self.reserved.get(slug, 0)

    async def record(self, slug: str, reservation: int) -> None:
        self.writes += 1
        self.reserved[slug] = max(self.reserved.get(slug, 0), reservation)


def message(body: str) -> dict[str, object]:
    return {"type": "message", "room": "r", "user": "u", "body": body, "ts": 1}


async def serve(
    log: RoomLog, db: Database, node: str, count: int, *, ask: list[int] | None = None
) -> tuple[int, list[int]]:
    """Claim the room, recover its start, append ``count`` events; returns (start, seqs)."""
    lease = await RoomRegistry(log._redis, node).claim("r", presumed_dead="n1")

    async def ask_all(slug: str) -> list[int]:
        return ask or []

    start = await recover_start(log, "r", load_reservation=db.load, ask_all=ask_all)
    reservation = Reservation("r", db.record, reserved=start.reserved)
    last, seqs = start.last_seq, []
    for i in range(count):
        result = await append_reserved(
            log, reservation, "r", last_seq=last, node=node, epoch=lease.epoch,
            event=message(f"{node}{i}"), user="u", client_id=f"{node}-{i}",
        )  # fmt: skip
        last = result.seq
        seqs.append(result.seq)
    return start.last_seq, seqs


async def test_reservations_are_recorded_in_blocks_before_use(redis: Redis) -> None:
    log, db = RoomLog(redis, history_limit=1000, dedupe_ttl_s=60), Database()
    _, seqs = await serve(log, db, "n1", 250)
    assert seqs == list(range(1, 251))
    assert db.writes == 3 and db.reserved["r"] == 300
    assert await log.seq_state("r") == (250, 300)


async def test_a_take_over_after_a_flush_goes_on_above_the_database(redis: Redis) -> None:
    log, db = RoomLog(redis, history_limit=1000, dedupe_ttl_s=60), Database()
    await serve(log, db, "n1", 150)
    await redis.flushall()
    start, seqs = await serve(log, db, "n2", 2)
    assert start == 200 and seqs == [201, 202]
    page = await log.read("r", after=120)
    assert page.missing == [(121, 200)] and [e["seq"] for e in page.events] == [201, 202]


async def test_a_take_over_when_redis_lost_a_tail_the_nodes_saw(redis: Redis) -> None:
    log, db = RoomLog(redis, history_limit=1000, dedupe_ttl_s=60), Database()
    await serve(log, db, "n1", 150)
    # A promoted replica that lagged: it has seqs 1..120, the nodes saw 150.
    kept = await redis.xrange("chat:{room:r}:log", "-", "120-0")
    await redis.delete("chat:{room:r}:log")
    for entry_id, fields in kept:
        await redis.xadd("chat:{room:r}:log", fields, id=entry_id)
    await redis.set("chat:{room:r}:seq", 120)
    start, seqs = await serve(log, db, "n2", 1, ask=[150, 140])
    assert start == 200 and seqs == [201]
    page = await log.read("r", after=110)
    assert [e["seq"] for e in page.events] == [*range(111, 121), 201]
    assert page.missing == [(121, 200)]


async def test_a_planned_take_over_skips_no_seq(redis: Redis) -> None:
    log, db = RoomLog(redis, history_limit=1000, dedupe_ttl_s=60), Database()
    await serve(log, db, "n1", 100)  # the block is used up exactly
    start, seqs = await serve(log, db, "n2", 1, ask=[100])
    assert start == 100 and seqs == [101]
    assert db.reserved["r"] == 200


async def test_a_reservation_that_never_reached_redis_skips_no_seq(redis: Redis) -> None:
    log, db = RoomLog(redis, history_limit=1000, dedupe_ttl_s=60), Database()
    await serve(log, db, "n1", 100)
    await db.record("r", 100 + RESERVE_BLOCK)  # recorded, then the owner died before appending
    start, seqs = await serve(log, db, "n2", 1, ask=[100])
    assert start == 100 and seqs == [101]


async def test_an_append_behind_a_raised_counter_reserves_at_redis_position(redis: Redis) -> None:
    log, db = RoomLog(redis, history_limit=1000, dedupe_ttl_s=60), Database()
    lease = await RoomRegistry(redis, "n1").claim("r")
    reservation = Reservation("r", db.record, reserved=0)
    first = await append_reserved(
        log, reservation, "r", last_seq=0, node="n1", epoch=lease.epoch,
        event=message("a"), user="u", client_id="a",
    )  # fmt: skip
    await log.raise_seq_floor("r", 500)  # another node's recovery moved Redis on
    second = await append_reserved(
        log, reservation, "r", last_seq=first.seq, node="n1", epoch=lease.epoch,
        event=message("b"), user="u", client_id="b",
    )  # fmt: skip
    assert second.seq == 501
    assert db.reserved["r"] == 500 + RESERVE_BLOCK == await log.reservation("r")


async def test_without_a_database_appends_are_unreserved(redis: Redis) -> None:
    log = RoomLog(redis, history_limit=1000, dedupe_ttl_s=60)
    lease = await RoomRegistry(redis, "n1").claim("r")
    reservation = Reservation("r", None, reserved=0)
    assert await reservation.cover(10) is None
    result = await append_reserved(
        log, reservation, "r", last_seq=0, node="n1", epoch=lease.epoch,
        event=message("a"), user="u", client_id="a",
    )  # fmt: skip
    assert result.seq == 1 and await log.reservation("r") == 0
