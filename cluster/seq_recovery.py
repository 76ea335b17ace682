"""Where a room's seqs go on when a node starts serving it: never backwards, never reissued.

Three witnesses of the seqs a room has issued, none complete on its own:

- Redis: its seq counter (the last seq it holds) and its reservation, the highest seq
  reservation any append it holds was issued under. The append script records the reservation
  in the same atomic step as the event, and replication and the AOF keep a prefix of those
  steps: so Redis holds reservation R exactly when it holds an append issued under R.
- The database: the newest reservation ``R_db``. Before a room uses a seq above its reservation
  it records a new one, ``RESERVE_BLOCK`` above its last seq, there; so every seq ever issued is
  at most ``R_db``, and the newest reservation was made at seq ``R_db - RESERVE_BLOCK``.
- Live nodes: the highest seq each has seen for the room (delivered by its fan-out, or acked
  through it). A node that saw seq s proves s was issued.
- The archive (``cluster.history``, when the application keeps one): the highest seq it
  archived was issued, like a node's; it survives every node and Redis at once.

``start_position`` decides, from those numbers only, where the room goes on (pure, tested case
by case); ``recover_start`` gathers them and raises Redis's counter when seqs were lost, so the
log itself records the jump and readers get ``gap`` for it.

What no witness can show is not covered: an append that Redis lost, acked to sockets on nodes
that all died at the same moment, under the reservation Redis still holds. Every single fault
(Redis loses data, or nodes die) is covered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import events
from .log import AppendResult, RoomLog, Unreserved

logger = logging.getLogger("cluster.seq_recovery")

# Seqs reserved in the database at a time (hi/lo): one database write per block of appends.
RESERVE_BLOCK = 100
# How long the seq knowledge of live nodes is waited for before deciding without the silent
# (a dead owner is not asked at all; this bounds a slow live node's share of a take-over).
ASK_NODES_TIMEOUT_S = 0.5

AskAll = Callable[[str], Awaitable[list[int]]]  # slug -> highest seq each live node knows
LoadArchived = Callable[[str], Awaitable[int]]  # slug -> the highest seq archived (0: none)
LoadReservation = Callable[[str], Awaitable[int]]  # slug -> the database's reservation
RecordReservation = Callable[[str, int], Awaitable[None]]  # (slug, reservation), never lowers


@dataclass(frozen=True)
class StartPosition:
    last_seq: int  # the room goes on here: its next event gets last_seq + 1
    reserved: int  # the reservation in force (the server reserves above it before using more)
    lost: bool  # seqs in (what Redis holds, last_seq] may have been issued and are gone
    reason: str
    redis_last: int = 0  # the highest seq Redis held when the position was decided
    archived: int = 0  # the highest seq the archive held then (0: none, or not asked)


def start_position(
    *,
    redis_last: int,
    redis_reserved: int,
    db_reserved: int,
    nodes_known: int = 0,
    predecessor_last: int | None = None,
    block: int = RESERVE_BLOCK,
    archived: int = 0,
) -> StartPosition:
    """Where a room goes on, from what Redis, the database, live nodes and the archive know.

    ``redis_last``: the highest seq Redis holds (counter or last log entry); ``redis_reserved``:
    its reservation; ``db_reserved``: the database's (0: none, or no database);
    ``nodes_known``: the highest seq any live node has seen (0: none); ``predecessor_last``: in
    a planned hand-off, the last seq the previous owner issued before it stopped (None: not a
    hand-off). It knows exactly: if Redis holds that seq it holds everything before it too.
    ``archived``: the highest seq the archive holds (0: none, or no archive).
    """
    # An archived seq was issued, as surely as one a live node saw: a witness like them.
    nodes_known = max(nodes_known, archived)
    reserved = max(redis_reserved, db_reserved)
    if predecessor_last is not None:
        if redis_last >= predecessor_last and nodes_known <= redis_last:
            return StartPosition(redis_last, reserved, False, "Redis holds all the owner issued")
        known = max(nodes_known, predecessor_last)
        return _lost(redis_last, reserved, db_reserved, known, "Redis lost the owner's last seqs")
    if nodes_known > redis_last:
        # A live node saw a seq Redis does not hold: Redis lost a suffix of the room.
        return _lost(redis_last, reserved, db_reserved, nodes_known, "nodes saw more than Redis")
    if redis_reserved >= db_reserved:
        # Redis holds an append issued under the newest reservation, so it lost nothing before
        # it; and nothing after it that a live node saw.
        return StartPosition(redis_last, reserved, False, "Redis holds the newest reservation")
    made_at = db_reserved - block
    if made_at > 0 and redis_last == made_at:
        # The newest reservation was made at exactly the seq Redis holds, and no append under it
        # reached Redis (it would have brought the reservation along) or any live node: it was
        # made, then not used (a crash or a fence right after the database write).
        return StartPosition(redis_last, reserved, False, "newest reservation made but unused")
    return _lost(redis_last, reserved, db_reserved, nodes_known, "Redis lost the reservation")


def _lost(
    redis_last: int, reserved: int, db_reserved: int, nodes_known: int, why: str
) -> StartPosition:
    # Anything up to the database's reservation may have been issued (and acked) since Redis's
    # copy: go on above all of it. Readers get ``gap`` for the seqs in between.
    return StartPosition(max(redis_last, db_reserved, nodes_known), reserved, True, why)


async def nodes_known(slug: str, ask_all: AskAll | None, timeout_s: float) -> int:
    """The highest seq any live node has seen for ``slug``; 0 if none answer in time."""
    if ask_all is None:
        return 0
    try:
        async with asyncio.timeout(timeout_s):
            answers = await ask_all(slug)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.warning("room %s: could not ask nodes for their seqs (%s)", slug, exc)
        return 0
    return max([0, *(int(a) for a in answers)])


async def recover_start(
    log: RoomLog,
    slug: str,
    *,
    load_reservation: LoadReservation | None,
    ask_all: AskAll | None,
    predecessor_last: int | None = None,
    timeout_s: float = ASK_NODES_TIMEOUT_S,
    block: int = RESERVE_BLOCK,
    load_archived: LoadArchived | None = None,
) -> StartPosition:
    """Decide where ``slug`` goes on; call it holding the room's lease, before serving.

    ``predecessor_last``: in a planned hand-off, the previous owner's last seq (it stopped
    serving before releasing the lease); the nodes need not be asked then.

    When seqs were lost, Redis's counter is raised to the new position first: the log records
    the jump (readers see the seqs in between as missing), and a later owner starts above it.
    """
    # Nodes first: what they saw was appended before our claim fenced the previous owner, so
    # Redis, read afterwards, holds it unless Redis lost it.
    known = 0 if predecessor_last is not None else await nodes_known(slug, ask_all, timeout_s)
    redis_last, redis_reserved = await log.seq_state(slug)
    db_reserved = await load_reservation(slug) if load_reservation is not None else 0
    # Not asked in a hand-off: whatever it archived, the predecessor issued, and its last seq
    # is known exactly already.
    asked = load_archived is not None and predecessor_last is None
    archived = await load_archived(slug) if asked and load_archived is not None else 0
    position = start_position(
        redis_last=redis_last,
        redis_reserved=redis_reserved,
        db_reserved=db_reserved,
        nodes_known=known,
        predecessor_last=predecessor_last,
        block=block,
        archived=archived,
    )
    if position.lost:
        logger.warning(
            "room %s: %s (Redis holds seq %d under reservation %d; database reservation %d; "
            "nodes saw %d; archived %d): going on above %d",
            slug, position.reason, redis_last, redis_reserved, db_reserved, known, archived,
            position.last_seq,
        )  # fmt: skip
        await log.raise_seq_floor(slug, position.last_seq)
    return dataclasses.replace(position, redis_last=redis_last, archived=archived)


class Reservation:
    """The seq reservation a room server appends under.

    ``record`` (the database hook) is awaited before a block is used, so the database is always
    at or ahead of any reservation an append carries. Without a hook (no database) appends are
    unreserved: ``cover`` returns None.
    """

    def __init__(
        self,
        slug: str,
        record: RecordReservation | None,
        *,
        reserved: int,
        block: int = RESERVE_BLOCK,
    ) -> None:
        self.slug = slug
        self._record = record
        self._block = block
        self.reserved = reserved

    async def cover(self, last_seq: int) -> int | None:
        """A reservation that covers seq ``last_seq + 1``, recording a new block first if
        needed. ``last_seq`` must be Redis's position (the new block is made at it)."""
        if self._record is None:
            return None
        if last_seq + 1 > self.reserved:
            reservation = last_seq + self._block
            await self._record(self.slug, reservation)
            self.reserved = reservation
        return self.reserved


async def append_reserved(
    log: RoomLog,
    reservation: Reservation,
    slug: str,
    *,
    last_seq: int,
    node: str,
    epoch: int,
    event: events.Event,
    user: str,
    client_id: str | None,
    event_id: str = "",
    state_delta: str = "",
    seq_placeholder: str = "",
) -> AppendResult:
    """``log.append`` (same arguments) under a reservation that covers the next seq.

    ``last_seq``: the server's position (also the append's seq floor). If Redis's counter is
    ahead of it (raised by a recovery elsewhere), the script refuses; the block is then made at
    Redis's position and the append tried once more. Raises what ``log.append`` raises.
    """

    async def attempt(covered: int | None) -> AppendResult:
        return await log.append(
            slug,
            node=node,
            epoch=epoch,
            seq_floor=last_seq,
            event=event,
            user=user,
            client_id=client_id,
            event_id=event_id,
            state_delta=state_delta,
            seq_placeholder=seq_placeholder,
            reservation=covered,
        )

    try:
        return await attempt(await reservation.cover(last_seq))
    except Unreserved as exc:
        return await attempt(await reservation.cover(exc.next_seq - 1))


class SeqWitness:
    """The highest seq this node has seen per room (delivered or acked): its answer when a new
    owner asks (``recover_start``'s ``ask_all``). One int per room the node touched."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def observe(self, slug: str, seq: int) -> None:
        if seq > self._seen.get(slug, 0):
            self._seen[slug] = seq

    def known(self, slug: str) -> int:
        return self._seen.get(slug, 0)

    def forget(self, slug: str) -> None:
        """Only when the room itself is gone (purged with its seqs, archived for good)."""
        self._seen.pop(slug, None)
