"""Delivery of rooms' events to this node's sockets: one subscription per room with local members.

The owner publishes each event once per room; every node with members receives it once and
hands it to its own sockets, so a message costs O(nodes) in Redis, not O(members). Pub/sub can
drop messages (a blinking connection), so each room here tracks the last seq it delivered and
fills any hole from the durable log before delivering further: a socket never sees a gap. A
failed fill is retried from the log with backoff: a room never silently stops delivering.

The caller serialises the opening and closing of a room with ``RoomLocks`` (one lock per room,
alive while anyone holds or waits for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis

from . import events
from .hub import PubSubHub
from .keys import RoomKeys
from .log import RoomLog
from .publishing import publish
from .stats import NodeStats
from .tasks import TaskGroup

logger = logging.getLogger("cluster.delivery")

Frame = dict[str, Any]

CLOSE_INTERNAL = 1011  # a socket whose deliver failed: it may have missed events, it resumes
FILL_PAGE = 500  # events read from the log at once when filling a hole
RETRY_MIN_S = 0.1
RETRY_MAX_S = 5.0
# An inbox item that asks the loop to read the log's position and fill up to it (after a
# pub/sub reconnect, or after a failure: whatever was published meanwhile is in the log).
CHECK_LOG = -1


class Listener(Protocol):
    """A local socket as delivery sees it. Neither method may block (they queue)."""

    user: str

    def deliver(self, frame: Frame) -> None: ...

    def request_close(self, code: int) -> None: ...


@dataclass
class _LockEntry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holders and waiters


class RoomLocks:
    """One lock per room, kept while anyone holds it or waits for it.

    A lock dropped from the table while held (or waited for) lets the next caller make a second
    one for the same room: two callers then open the room at once, and one of the two room
    objects is never fed. So the entry goes only when its last user leaves.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _LockEntry] = {}

    @contextlib.asynccontextmanager
    async def hold(self, slug: str) -> AsyncIterator[None]:
        entry = self._entries.get(slug)
        if entry is None:
            entry = self._entries[slug] = _LockEntry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[slug]

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(eq=False)
class DeliveryRoom:
    slug: str
    listeners: set[Listener] = field(default_factory=set)
    last_seq: int = 0  # the highest seq handed to the listeners
    inbox: asyncio.Queue[tuple[int, str]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None


class Delivery:
    def __init__(
        self,
        redis: Redis,
        hub: PubSubHub,
        log: RoomLog,
        node: str,
        *,
        on_presence: Callable[[str, str], None],
        stats: NodeStats | None = None,
    ) -> None:
        self._stats = stats if stats is not None else NodeStats()
        self._redis = redis
        self._hub = hub
        self._log = log
        self._node = node
        self._on_presence = on_presence
        self.rooms: dict[str, DeliveryRoom] = {}
        self._tasks = TaskGroup("delivery")
        self.delivered = 0
        self.gaps_filled = 0
        self.failures = 0  # fills that failed and were retried

    @property
    def connections(self) -> int:
        return sum(len(r.listeners) for r in self.rooms.values())

    async def stop(self) -> None:
        for slug in list(self.rooms):
            await self.close(slug)
        await self._tasks.stop()

    async def open(self, slug: str) -> DeliveryRoom:
        """The room's delivery, subscribed (the caller holds the room's lock)."""
        room = self.rooms.get(slug)
        if room is not None:
            return room
        room = DeliveryRoom(slug)
        channel = RoomKeys(slug).channel
        # Subscribe first, then read the watermark: anything published in between is either
        # at or below it (skipped) or above it (delivered), never lost.
        # Sharded: on a Redis Cluster 7+ the room's channel is SSUBSCRIBEd on the master of the
        # room's slot; if that slot moves, the hub subscribes it again there and we fill the gap.
        await self._hub.subscribe(
            channel,
            lambda data: self._on_publish(room, data),
            sharded=True,
            on_resubscribed=lambda: room.inbox.put_nowait((CHECK_LOG, "")),
        )
        try:
            room.last_seq = await self._log.last_seq(slug)
        except BaseException:
            await self._hub.unsubscribe(channel)
            raise
        room.task = self._tasks.spawn(self._deliver_loop(room), f"room:{slug}")
        self.rooms[slug] = room
        return room

    async def close(self, slug: str) -> None:
        """Stop delivering the room (the caller holds the room's lock)."""
        room = self.rooms.pop(slug, None)
        if room is None:
            return
        if room.task is not None:
            room.task.cancel()
        await self._hub.unsubscribe(RoomKeys(slug).channel)

    def broadcast(self, slug: str, frame: Frame) -> None:
        """An ephemeral frame (presence, typing) to every local socket of the room."""
        room = self.rooms.get(slug)
        if room is not None:
            self._send(room, frame)

    def close_all(self, code: int) -> None:
        """Ask every local socket to close (drain): they resume elsewhere with ``after=``."""
        for room in list(self.rooms.values()):
            for listener in list(room.listeners):
                try:
                    listener.request_close(code)
                except Exception:
                    logger.exception("asking a socket of %s to close failed", room.slug)

    def resync(self) -> None:
        """After a pub/sub reconnect: every room fills what was published meanwhile."""
        for room in self.rooms.values():
            room.inbox.put_nowait((CHECK_LOG, ""))

    async def typing(self, slug: str, user: str) -> None:
        payload = json.dumps({"user": user, "node": self._node})
        command = self._hub.publish_command(sharded=True)
        await publish(self._redis, RoomKeys(slug).channel, "T" + payload, command)

    # -- from pub/sub --------------------------------------------------------------------

    def _on_publish(self, room: DeliveryRoom, data: str) -> None:
        kind, rest = data[:1], data[1:]
        if kind == "E":
            seq_text, _, body = rest.partition(" ")
            room.inbox.put_nowait((int(seq_text), body))
        elif kind == "T":
            user = json.loads(rest)["user"]
            frame = {"type": "typing", "user": user}
            for listener in list(room.listeners):
                if listener.user != user:
                    self._send_one(room, listener, frame)
        elif kind == "P":
            self._on_presence(room.slug, rest)

    # -- the loop ------------------------------------------------------------------------

    async def _deliver_loop(self, room: DeliveryRoom) -> None:
        """Deliver durable events in seq order; fill holes from the log first."""
        while True:
            seq, body = await room.inbox.get()
            backoff = RETRY_MIN_S
            while True:
                try:
                    await self._advance(room, seq, body)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.failures += 1
                    logger.exception(
                        "delivery in %s failed; retrying from the log in %.2fs", room.slug, backoff
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(RETRY_MAX_S, backoff * 2)
                    # Whatever was published meanwhile is in the log too: fill up to its end.
                    seq, body = CHECK_LOG, ""

    async def _advance(self, room: DeliveryRoom, seq: int, body: str) -> None:
        if seq == CHECK_LOG:
            known = await self._log.last_seq(room.slug)
            if known < room.last_seq:
                # Redis lost the room's log: make sure seqs go on above what we delivered.
                await self._log.raise_seq_floor(room.slug, room.last_seq)
            seq = known
        if seq <= room.last_seq:
            return
        if body and seq == room.last_seq + 1:
            self._deliver(room, events.decode(seq, body))
            return
        # A hole (a dropped publish), or a log check with no event of its own. Read and
        # deliver a page at a time: after a long outage the hole can be the whole history.
        self.gaps_filled += 1
        cursor = room.last_seq
        while cursor < seq:
            page = await self._log.read(room.slug, after=cursor, limit=FILL_PAGE)
            wanted = [e for e in page.events if e["seq"] <= seq]
            for event in wanted:
                self._deliver(room, event)
            if len(page.events) < FILL_PAGE or len(wanted) < len(page.events):
                break
            cursor = page.events[-1]["seq"]
        if body and room.last_seq < seq:
            self._deliver(room, events.decode(seq, body))

    def _deliver(self, room: DeliveryRoom, event: events.Event) -> None:
        if event["seq"] <= room.last_seq:
            return
        room.last_seq = event["seq"]
        self.delivered += 1
        self._send(room, event)
        # Measured once per event, never per socket: the fan-out's hot path.
        listeners = len(room.listeners)
        if listeners:
            stats = self._stats
            stats.socket_deliveries += listeners
            stamped_ms = event.get("ts")
            if isinstance(stamped_ms, int):
                stats.fanout_latency.observe(max(0.0, time.time() - stamped_ms / 1000))

    def _send(self, room: DeliveryRoom, frame: Frame) -> None:
        for listener in list(room.listeners):
            try:  # _send_one, inlined: once per local socket per event
                listener.deliver(frame)
            except Exception:
                self._failed(room, listener)

    def _send_one(self, room: DeliveryRoom, listener: Listener, frame: Frame) -> None:
        try:
            listener.deliver(frame)
        except Exception:
            self._failed(room, listener)

    @staticmethod
    def _failed(room: DeliveryRoom, listener: Listener) -> None:
        # One broken socket costs nobody else a frame; it may have missed this one, so it is
        # asked to close, and its client resumes with ``after=``.
        logger.exception("a socket of %s failed to take a frame; closing it", room.slug)
        with contextlib.suppress(Exception):
            listener.request_close(CLOSE_INTERNAL)
