"""The durable room log: a Redis stream per room whose entry ids are the events' seqs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from . import events, scripts
from .errors import Fenced
from .keys import RoomKeys

READ_BATCH = 500


@dataclass(frozen=True)
class AppendResult:
    seq: int
    id: str
    duplicate: bool


@dataclass(frozen=True)
class LogRange:
    events: list[events.Event]
    first_available: int  # lowest seq still kept (last_seq + 1 when the log is empty)
    last_seq: int  # highest seq ever assigned in the room


class RoomClosed(Exception):
    """The room is archived: it takes no new events."""


class RoomLog:
    def __init__(self, redis: Redis, *, history_limit: int, dedupe_ttl_s: int) -> None:
        self._redis = redis
        self._history_limit = history_limit
        self._dedupe_ttl_s = dedupe_ttl_s
        self._append = redis.register_script(scripts.APPEND_EVENT)
        self._raise_floor = redis.register_script(scripts.RAISE_SEQ_FLOOR)
        self._raise_reserved = self._raise_floor  # the same "never lower it" counter raise

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
    ) -> AppendResult:
        """Append ``event`` (no seq) as the room's next event; raises Fenced or RoomClosed.

        ``state_delta``, if given, goes to the room's state stream in the same atomic step, with
        every ``seq_placeholder`` in it replaced by the seq the event gets.
        """
        k = RoomKeys(slug)
        dedupe_key = k.dedupe(user, client_id) if client_id else k.dedupe(user, "-")
        reply: list[Any] = await self._append(
            keys=[k.lease, k.seq, k.log, dedupe_key, k.closed, k.state],
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
            ],
        )
        status = reply[0]
        if status == "fenced":
            raise Fenced(slug, reply[1], reply[2])
        if status == "closed":
            raise RoomClosed(slug)
        return AppendResult(seq=int(reply[1]), id=str(reply[2]), duplicate=status == "dup")

    async def read(self, slug: str, *, after: int, limit: int = READ_BATCH) -> LogRange:
        """Events with ``seq > after``, oldest first, at most ``limit``."""
        k = RoomKeys(slug)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xrange(k.log, min=f"{after + 1}-0", max="+", count=limit)
            pipe.xrange(k.log, min="-", max="+", count=1)
            pipe.get(k.seq)
            entries, first, last_raw = await pipe.execute()
        last_seq = int(last_raw or 0)
        decoded = [events.decode(events.seq_of_stream_id(i), f["e"]) for i, f in entries]
        if decoded:
            last_seq = max(last_seq, decoded[-1]["seq"])
        first_available = events.seq_of_stream_id(first[0][0]) if first else last_seq + 1
        return LogRange(decoded, first_available, last_seq)

    async def read_all(self, slug: str, *, after: int, until: int) -> LogRange:
        """Every kept event with ``after < seq <= until``, in batches."""
        collected: list[events.Event] = []
        cursor = after
        while True:
            page = await self.read(slug, after=cursor, limit=READ_BATCH)
            wanted = [e for e in page.events if e["seq"] <= until]
            collected.extend(wanted)
            if len(wanted) < len(page.events) or len(page.events) < READ_BATCH:
                return LogRange(collected, page.first_available, page.last_seq)
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

    async def reservation(self, slug: str) -> int:
        """The seq reservation Redis has seen for the room (0 if it never saw one)."""
        return int(await self._redis.get(RoomKeys(slug).reserved) or 0)

    async def set_reservation(self, slug: str, seq: int) -> None:
        await self._raise_reserved(keys=[RoomKeys(slug).reserved], args=[str(seq)])

    async def raise_seq_floor(self, slug: str, floor: int) -> int:
        return int(await self._raise_floor(keys=[RoomKeys(slug).seq], args=[str(floor)]))
