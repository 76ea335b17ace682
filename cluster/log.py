"""The durable room log: a Redis stream per room whose entry ids are the events' seqs.

Seqs are dense (1, 2, 3 ...) except where Redis lost events: a room that recovered from a loss
(seq_recovery) goes on above everything anyone may have seen, and the seqs in between have no
event. Readers learn of such holes, and of what was trimmed, from ``LogRange.missing``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from . import events, scripts
from .errors import ClusterError, Fenced
from .fastlane import FastLane
from .keys import RoomKeys
from .publishing import room_publish_command
from .replication import ReplicaWait

READ_BATCH = 500
# Events per script call when restoring archived events: each call blocks Redis briefly.
RESTORE_BATCH = 250


@dataclass(frozen=True)
class AppendResult:
    seq: int
    id: str
    duplicate: bool


@dataclass(frozen=True)
class LogRange:
    """Kept events of a seq range ``(after, upto]``, oldest first, and the seqs in it that have
    no event.

    ``missing``: inclusive ``(first, last)`` ranges inside ``(after, upto]`` whose events are
    gone: trimmed (below ``first_available``) or lost by Redis (a hole inside the kept range, or
    past the last kept event up to ``last_seq``). ``events`` and ``missing`` together cover
    ``(after, upto]`` exactly, so a reader that sends ``gap`` with ``first_available = last + 1``
    for each missing range it passes, and then moves its position to ``upto``, never skips a hole
    silently and never waits for a seq that will not come.
    """

    events: list[events.Event]
    first_available: int  # lowest seq still kept (last_seq + 1 when the log is empty)
    last_seq: int  # highest seq ever assigned in the room
    missing: list[tuple[int, int]] = field(default_factory=list)
    upto: int = 0  # the range read ends here, inclusive (``after`` itself: nothing above it)


class RoomClosed(Exception):
    """The room is archived: it takes no new events."""


class Unreserved(ClusterError):
    """The next seq lies above the reservation the append was issued under: the room server
    must reserve a block covering ``next_seq`` (in the database) and append again.

    Happens when Redis's seq counter was raised past the server's view (a loss recovered by
    another node's fan-out, say). Never reaches a client: it is the room server's to handle.
    """

    def __init__(self, slug: str, next_seq: int, reservation: int) -> None:
        super().__init__(f"room {slug!r}: next seq {next_seq} above reservation {reservation}")
        self.slug = slug
        self.next_seq = next_seq
        self.reservation = reservation


class RoomLog:
    def __init__(
        self,
        redis: Redis,
        *,
        history_limit: int,
        dedupe_ttl_s: int,
        replicas: ReplicaWait | None = None,
        hot: FastLane | None = None,
    ) -> None:
        self._redis = redis
        # Appends (and answers found by the dedupe) wait for this many replicas before an ack.
        self._replicas = replicas or ReplicaWait(redis, min_replicas=0, timeout_ms=0)
        self._history_limit = history_limit
        self._dedupe_ttl_s = dedupe_ttl_s
        # The append runs once per message: on the lean connection where there is one (with
        # min_replicas, ReplicaWait runs it on redis-py's connection, next to its WAIT).
        self._append = (hot or redis).register_script(scripts.APPEND_EVENT)
        self._raise_floor = redis.register_script(scripts.RAISE_SEQ_FLOOR)
        self._restore = redis.register_script(scripts.RESTORE_EVENTS)

    async def append(
        self,
        slug: str,
        *,
        node: str,
        epoch: int,
        seq_floor: int,
        event: events.Event,
        user: str,
        client_id: str | None,
        event_id: str = "",
        state_delta: str = "",
        seq_placeholder: str = "",
        reservation: int | None = None,
    ) -> AppendResult:
        """Append ``event`` (no seq) as the room's next event.

        Raises Fenced, RoomClosed, or Unreserved (the next seq is above ``reservation``); and
        ReplicasBehind (retryable) if fewer than ``min_replicas`` replicas confirm the append or
        the earlier answer a duplicate gets: the event stays in the log, unacked, and the
        sender's retry gets its seq from the dedupe (see cluster.replication for why that is
        correct).

        ``state_delta``, if given, goes to the room's state stream in the same atomic step, with
        every ``seq_placeholder`` in it replaced by the seq the event gets.

        ``reservation``: the seq reservation (recorded in the database first) this append is
        issued under. Redis records it in the same atomic step as the event, so Redis's
        reservation is never ahead of its log: a Redis that lost a suffix of its writes lost
        the reservations that came with them too (seq_recovery relies on it). None: unchecked
        and unrecorded (rooms without a database).

        A ``delete`` event also records its target in the room's deleted set (see ``message``).
        """
        k = RoomKeys(slug)
        dedupe_key = k.dedupe(user, client_id) if client_id else k.dedupe(user, "-")
        deleted_id, deleted_seq = "", ""
        if event.get("type") == "delete":
            target = event_id or str(event.get("id", ""))
            target_seq = events.seq_of_message_id(target)
            if target_seq is not None:
                deleted_id, deleted_seq = target, str(target_seq)
        reply: list[Any] = await self._replicas.script(
            self._append,
            keys=[k.lease, k.seq, k.log, dedupe_key, k.closed, k.state, k.reserved, k.deleted],
            args=[
                node,
                str(epoch),
                str(seq_floor),
                str(self._history_limit),
                str(self._dedupe_ttl_s),
                events.encode_body(event),
                k.channel,
                event_id,
                "1" if client_id else "0",
                state_delta,
                seq_placeholder,
                "" if reservation is None else str(reservation),
                deleted_id,
                deleted_seq,
                # SPUBLISH on a Redis Cluster 7+ (cluster/publishing.py; cached per client).
                await room_publish_command(self._redis),
            ],
            wrote=_appended,
        )
        status = reply[0]
        if status == "fenced":
            raise Fenced(slug, reply[1], reply[2])
        if status == "closed":
            raise RoomClosed(slug)
        if status == "unreserved":
            raise Unreserved(slug, int(reply[1]), int(reservation or 0))
        if status == "dup":
            # The answer of an earlier attempt, perhaps one whose replicas fell short.
            await self._replicas.confirm(dedupe_key)
        return AppendResult(seq=int(reply[1]), id=str(reply[2]), duplicate=status == "dup")

    async def find_applied(self, slug: str, user: str, client_id: str) -> AppendResult | None:
        """The answer a command (``user``, ``client_id``) got, if it was applied (kept a day):
        a re-send is acked with it again, before any check that would now refuse it."""
        key = RoomKeys(slug).dedupe(user, client_id)
        prior = await self._redis.get(key)
        if not prior:
            return None
        await self._replicas.confirm(key)  # it is acked again: on the replicas too (see append)
        seq_text, _, message_id = str(prior).partition(" ")
        return AppendResult(seq=int(seq_text), id=message_id, duplicate=True)

    async def message(self, slug: str, message_id: str) -> tuple[events.Event | None, bool]:
        """The ``message`` event that created ``message_id`` (None if it is not kept or is no
        message id), and whether it was deleted since. Two Redis reads in one round trip,
        whatever the room's length: never a scan of the log since the message."""
        seq = events.seq_of_message_id(message_id)
        if seq is None:
            return None, False
        k = RoomKeys(slug)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xrange(k.log, min=f"{seq}-0", max=f"{seq}-0", count=1)
            pipe.zscore(k.deleted, message_id)
            entries, deleted_score = await pipe.execute()
        if not entries:
            return None, False
        event = events.decode(seq, entries[0][1]["e"])
        if event.get("type") != "message" or event.get("id") != message_id:
            return None, False
        return event, deleted_score is not None

    async def read(self, slug: str, *, after: int, limit: int = READ_BATCH) -> LogRange:
        """Events with ``seq > after``, oldest first, at most ``limit``; with the holes among
        them (see LogRange). A full page ends at its last event; a shorter one at last_seq."""
        k = RoomKeys(slug)
        # The counter first: every seq up to it was appended (with its event, atomically)
        # before it was read, so the entries read next hold them; an append in between only
        # adds entries above it, never a false hole.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(k.seq)
            pipe.xrange(k.log, min=f"{after + 1}-0", max="+", count=limit)
            pipe.xrange(k.log, min="-", max="+", count=1)
            last_raw, entries, first = await pipe.execute()
        last_seq = int(last_raw or 0)
        decoded = [events.decode(events.seq_of_stream_id(i), f["e"]) for i, f in entries]
        if decoded:
            last_seq = max(last_seq, decoded[-1]["seq"])
        first_available = events.seq_of_stream_id(first[0][0]) if first else last_seq + 1
        upto = decoded[-1]["seq"] if len(decoded) >= limit else max(after, last_seq)
        return LogRange(decoded, first_available, last_seq, holes(after, decoded, upto), upto)

    async def read_all(self, slug: str, *, after: int, until: int) -> LogRange:
        """Every kept event with ``after < seq <= until``, in batches, with the holes among them
        (``upto`` is ``until``, or last_seq if that is lower)."""
        collected: list[events.Event] = []
        cursor = after
        while True:
            page = await self.read(slug, after=cursor, limit=READ_BATCH)
            wanted = [e for e in page.events if e["seq"] <= until]
            collected.extend(wanted)
            if len(wanted) < len(page.events) or len(page.events) < READ_BATCH:
                upto = max(after, min(until, page.last_seq))
                missing = holes(after, collected, upto)
                return LogRange(collected, page.first_available, page.last_seq, missing, upto)
            cursor = page.events[-1]["seq"]

    async def read_one(self, slug: str, seq: int) -> events.Event | None:
        entries = await self._redis.xrange(RoomKeys(slug).log, f"{seq}-0", f"{seq}-0")
        return events.decode(seq, entries[0][1]["e"]) if entries else None

    async def tail(self, slug: str, count: int) -> list[events.Event]:
        entries = await self._redis.xrevrange(RoomKeys(slug).log, count=count)
        return [events.decode(events.seq_of_stream_id(i), f["e"]) for i, f in reversed(entries)]

    async def last_seq(self, slug: str) -> int:
        """The highest seq the room has assigned: the counter or the log, whichever is higher."""
        k = RoomKeys(slug)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(k.seq)
            pipe.xrevrange(k.log, count=1)
            raw, last = await pipe.execute()
        from_log = events.seq_of_stream_id(last[0][0]) if last else 0
        return max(int(raw or 0), from_log)

    async def seq_state(self, slug: str) -> tuple[int, int]:
        """(the highest seq Redis holds for the room, the reservation it holds), read at once."""
        k = RoomKeys(slug)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(k.seq)
            pipe.xrevrange(k.log, count=1)
            pipe.get(k.reserved)
            raw, last, reserved = await pipe.execute()
        from_log = events.seq_of_stream_id(last[0][0]) if last else 0
        return max(int(raw or 0), from_log), int(reserved or 0)

    async def reservation(self, slug: str) -> int:
        """The seq reservation Redis has seen for the room (0 if it never saw one)."""
        return int(await self._redis.get(RoomKeys(slug).reserved) or 0)

    async def restore(
        self, slug: str, *, node: str, epoch: int, restored: list[events.Event]
    ) -> int:
        """Write ``restored`` (events with their seqs, oldest first: an archive's copy) back
        into the log, above its last entry only, fenced by the lease; returns how many were
        written. Raises Fenced. Nothing is published: no client is owed these as news."""
        k = RoomKeys(slug)
        written = 0
        for start in range(0, len(restored), RESTORE_BATCH):
            args = [node, str(epoch), str(self._history_limit)]
            for event in restored[start : start + RESTORE_BATCH]:
                body = {key: value for key, value in event.items() if key != "seq"}
                target = str(event.get("id", "")) if event.get("type") == "delete" else ""
                target_seq = events.seq_of_message_id(target) if target else None
                args += [
                    str(int(event["seq"])),
                    events.encode_body(body),
                    target if target_seq is not None else "",
                    str(target_seq or ""),
                ]
            reply: list[Any] = await self._restore(
                keys=[k.lease, k.seq, k.log, k.deleted], args=args
            )
            if reply[0] == "fenced":
                raise Fenced(slug, reply[1], reply[2])
            written += int(reply[1])
        return written

    async def restore_dedupe(
        self, slug: str, applied: list[tuple[str, str, int, str, int]], *, now_ms: int
    ) -> None:
        """Remember ``(user, client_id, seq, id, ts in ms)`` as applied commands again (Redis
        lost their dedupe keys with the log), each for what is left of its day: a client
        re-sending one is acked with its archived seq instead of posting it twice. Never
        replaces a key."""
        k = RoomKeys(slug)
        async with self._redis.pipeline(transaction=False) as pipe:
            for user, client_id, seq, message_id, ts_ms in applied:
                left_s = self._dedupe_ttl_s - max(0, now_ms - ts_ms) // 1000
                if left_s > 0:
                    key = k.dedupe(user, client_id)
                    pipe.set(key, f"{seq} {message_id}", nx=True, ex=left_s)
            await pipe.execute()

    async def raise_seq_floor(self, slug: str, floor: int) -> int:
        return int(await self._raise_floor(keys=[RoomKeys(slug).seq], args=[str(floor)]))


def _appended(reply: list[Any]) -> bool:
    """Whether APPEND_EVENT wrote: only ``ok`` did (a duplicate is confirmed on its own)."""
    return bool(reply) and reply[0] == "ok"


def holes(after: int, kept: list[events.Event], upto: int) -> list[tuple[int, int]]:
    """Inclusive seq ranges in ``(after, upto]`` with no event in ``kept`` (sorted by seq)."""
    holes: list[tuple[int, int]] = []
    expected = after + 1
    for event in kept:
        seq = int(event["seq"])
        if seq > expected:
            holes.append((expected, seq - 1))
        expected = max(expected, seq + 1)
    if upto >= expected:
        holes.append((expected, upto))
    return holes
