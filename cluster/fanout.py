"""Delivery to this node's sockets: one subscription per room with local members.

The owner publishes each event once per room; every node with members receives it once and
hands it to its own sockets, so a message costs O(nodes) in Redis, not O(members). Pub/sub can
drop messages (a blinking connection), so each room here tracks the last seq it delivered and
fills any hole from the durable log before delivering further: a socket never sees a gap.

Presence lives here too: a hash per room of ``node\\x1fuser -> sockets on that node``, changes
announced on the room channel, and a mirror per room that turns per-node entries into per-user
joins and leaves (a user with three tabs on two nodes is one presence).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis

from . import events, keys
from .hub import PubSubHub
from .keys import RoomKeys
from .log import RoomLog
from .tasks import TaskGroup

logger = logging.getLogger("cluster.fanout")

SEP = "\x1f"


class Listener(Protocol):
    """A local socket: ``deliver`` must not block (it queues)."""

    user: str

    def deliver(self, frame: dict[str, Any]) -> None: ...


@dataclass
class LocalRoom:
    slug: str
    listeners: set[Listener] = field(default_factory=set)
    last_seq: int = 0
    # user -> nodes where that user has sockets
    presence: dict[str, set[str]] = field(default_factory=dict)
    local_counts: dict[str, int] = field(default_factory=dict)
    inbox: asyncio.Queue[tuple[int, str] | None] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    def users(self) -> list[str]:
        return sorted(u for u, nodes in self.presence.items() if nodes)


@dataclass(frozen=True)
class Attachment:
    last_seq: int
    users: list[str]


class Fanout:
    def __init__(
        self,
        redis: Redis,
        hub: PubSubHub,
        log: RoomLog,
        node: str,
        *,
        is_live: Callable[[str], bool],
    ) -> None:
        self._redis = redis
        self._hub = hub
        self._log = log
        self._node = node
        self._is_live = is_live
        self.rooms: dict[str, LocalRoom] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks = TaskGroup("fanout")
        self.delivered = 0
        self.gaps_filled = 0

    @property
    def connections(self) -> int:
        return sum(len(r.listeners) for r in self.rooms.values())

    async def stop(self) -> None:
        for slug in list(self.rooms):
            room = self.rooms.pop(slug, None)
            if room is None:  # closed by a detach while we awaited
                continue
            await self._hub.unsubscribe(RoomKeys(slug).channel)
            await self._clear_presence(room)
            if room.task is not None:
                room.task.cancel()
        await self._tasks.stop()

    async def attach(self, slug: str, listener: Listener) -> Attachment:
        """Start delivering ``slug``'s events with seq > the returned last_seq to ``listener``."""
        async with self._lock(slug):
            room = self.rooms.get(slug)
            if room is None:
                room = await self._open(slug)
            # Presence first: the listener learns of itself from presence_state, not a diff.
            await self._presence_add(room, listener.user)
            room.listeners.add(listener)
            return Attachment(room.last_seq, room.users())

    async def detach(self, slug: str, listener: Listener) -> None:
        async with self._lock(slug):
            room = self.rooms.get(slug)
            if room is None or listener not in room.listeners:
                return
            room.listeners.discard(listener)
            try:
                await self._presence_remove(room, listener.user)
            finally:
                if not room.listeners:
                    await self._close(room)

    async def typing(self, slug: str, user: str) -> None:
        payload = json.dumps({"user": user, "node": self._node})
        await self._redis.publish(RoomKeys(slug).channel, "T" + payload)

    def close_all(self, code: int) -> None:
        """Ask every local socket to close (drain): they resume elsewhere with ``after=``."""
        for room in self.rooms.values():
            for listener in list(room.listeners):
                listener.deliver({"type": "_close", "code": code})

    async def resync(self) -> None:
        """After a pub/sub reconnect: re-announce our presence and fill every room's gap."""
        for room in list(self.rooms.values()):
            try:
                if room.local_counts:
                    await self._redis.hset(
                        RoomKeys(room.slug).presence,
                        mapping={f"{self._node}{SEP}{u}": c for u, c in room.local_counts.items()},
                    )
                await self._load_presence(room)
                known = await self._log.last_seq(room.slug)
                if known < room.last_seq:
                    # Redis lost the room's log: make sure seqs go on above what we delivered.
                    await self._log.raise_seq_floor(room.slug, room.last_seq)
                room.inbox.put_nowait((known, ""))
            except Exception:
                logger.exception("resync of %s failed", room.slug)

    async def on_nodes_left(self, left: set[str]) -> None:
        for room in self.rooms.values():
            before = set(room.users())
            fields = []
            for user, nodes in room.presence.items():
                for node in nodes & left:
                    nodes.discard(node)
                    fields.append(f"{node}{SEP}{user}")
            self._announce_diff(room, before)
            if fields:
                try:
                    await self._redis.hdel(RoomKeys(room.slug).presence, *fields)
                except Exception:
                    logger.warning("could not clear presence of dead nodes in %s", room.slug)

    # -- rooms ---------------------------------------------------------------------------

    def _lock(self, slug: str) -> asyncio.Lock:
        return self._locks.setdefault(slug, asyncio.Lock())

    async def clear_stale_presence(self) -> int:
        """At start: remove presence a previous process under our name left behind (it was
        killed, or restarted faster than its peers noticed). Returns the entries removed."""
        index = keys.node_presence_key(self._node)
        removed = 0
        for slug in await self._redis.smembers(index):
            presence_key = RoomKeys(slug).presence
            mine = [
                f for f in await self._redis.hkeys(presence_key) if f.startswith(self._node + SEP)
            ]
            if mine:
                await self._redis.hdel(presence_key, *mine)
                removed += len(mine)
                for field in mine:
                    payload = {"node": self._node, "user": field.split(SEP, 1)[1], "present": False}
                    await self._redis.publish(RoomKeys(slug).channel, "P" + json.dumps(payload))
        await self._redis.delete(index)
        return removed

    async def _open(self, slug: str) -> LocalRoom:
        room = LocalRoom(slug)
        await self._redis.sadd(keys.node_presence_key(self._node), slug)
        # Subscribe first, then read the watermark: anything published in between is either
        # at or below it (skipped) or above it (delivered), never lost.
        await self._hub.subscribe(RoomKeys(slug).channel, lambda data: self._on_publish(room, data))
        room.last_seq = await self._log.last_seq(slug)
        await self._load_presence(room)
        room.task = self._tasks.spawn(self._deliver_loop(room), f"room:{slug}")
        self.rooms[slug] = room
        return room

    async def _close(self, room: LocalRoom) -> None:
        self.rooms.pop(room.slug, None)
        await self._hub.unsubscribe(RoomKeys(room.slug).channel)
        if room.task is not None:
            room.task.cancel()
        self._locks.pop(room.slug, None)

    def _on_publish(self, room: LocalRoom, data: str) -> None:
        kind, rest = data[:1], data[1:]
        if kind == "E":
            seq_text, _, body = rest.partition(" ")
            room.inbox.put_nowait((int(seq_text), body))
        elif kind == "T":
            message = json.loads(rest)
            frame = {"type": "typing", "user": message["user"]}
            for listener in list(room.listeners):
                if listener.user != message["user"]:
                    listener.deliver(frame)
        elif kind == "P":
            message = json.loads(rest)
            before = set(room.users())
            nodes = room.presence.setdefault(message["user"], set())
            if message["present"]:
                nodes.add(message["node"])
            else:
                nodes.discard(message["node"])
            self._announce_diff(room, before)

    async def _deliver_loop(self, room: LocalRoom) -> None:
        """Deliver durable events in seq order; fill holes from the log first."""
        while True:
            item = await room.inbox.get()
            if item is None:
                return
            seq, body = item
            if seq <= room.last_seq:
                continue
            try:
                if seq > room.last_seq + 1 or not body:
                    # A hole (a dropped publish), or a resync marker with no event of its own.
                    filled = await self._log.read_all(room.slug, after=room.last_seq, until=seq)
                    self.gaps_filled += 1
                    for event in filled.events:
                        self._deliver(room, event)
                    if body and room.last_seq < seq:
                        self._deliver(room, events.decode(seq, body))
                    continue
                self._deliver(room, events.decode(seq, body))
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("delivery in %s failed; retrying from the log", room.slug)
                await asyncio.sleep(0.2)
                room.inbox.put_nowait((seq, ""))

    def _deliver(self, room: LocalRoom, event: events.Event) -> None:
        if event["seq"] <= room.last_seq:
            return
        room.last_seq = event["seq"]
        self.delivered += 1
        for listener in list(room.listeners):
            listener.deliver(event)

    # -- presence ------------------------------------------------------------------------

    async def _load_presence(self, room: LocalRoom) -> None:
        before = set(room.users())
        raw = await self._redis.hgetall(RoomKeys(room.slug).presence)
        presence: dict[str, set[str]] = {}
        for key, count in raw.items():
            node, _, user = key.partition(SEP)
            if int(count) > 0 and (node == self._node or self._is_live(node)):
                presence.setdefault(user, set()).add(node)
        room.presence = presence
        if room.listeners:
            self._announce_diff(room, before)

    async def _presence_add(self, room: LocalRoom, user: str) -> None:
        count = room.local_counts.get(user, 0) + 1
        room.local_counts[user] = count
        await self._redis.hincrby(RoomKeys(room.slug).presence, f"{self._node}{SEP}{user}", 1)
        if count == 1:
            self._set_local_presence(room, user, True)
            await self._announce_presence(room, user, True)

    async def _presence_remove(self, room: LocalRoom, user: str) -> None:
        count = room.local_counts.get(user, 0) - 1
        key = RoomKeys(room.slug).presence
        if count > 0:
            room.local_counts[user] = count
            await self._redis.hincrby(key, f"{self._node}{SEP}{user}", -1)
            return
        room.local_counts.pop(user, None)
        self._set_local_presence(room, user, False)
        await self._redis.hdel(key, f"{self._node}{SEP}{user}")
        await self._announce_presence(room, user, False)

    def _set_local_presence(self, room: LocalRoom, user: str, present: bool) -> None:
        # Our own announcement comes back through pub/sub too; applying it now means a socket
        # sees itself in presence_state, and the echo changes nothing.
        before = set(room.users())
        nodes = room.presence.setdefault(user, set())
        if present:
            nodes.add(self._node)
        else:
            nodes.discard(self._node)
        self._announce_diff(room, before)

    async def _announce_presence(self, room: LocalRoom, user: str, present: bool) -> None:
        payload = json.dumps({"node": self._node, "user": user, "present": present})
        await self._redis.publish(RoomKeys(room.slug).channel, "P" + payload)

    async def _clear_presence(self, room: LocalRoom) -> None:
        if not room.local_counts:
            return
        fields = [f"{self._node}{SEP}{u}" for u in room.local_counts]
        try:
            await self._redis.hdel(RoomKeys(room.slug).presence, *fields)
            for user in list(room.local_counts):
                await self._announce_presence(room, user, False)
        except Exception:
            logger.warning("could not clear our presence in %s", room.slug)
        room.local_counts.clear()

    def _announce_diff(self, room: LocalRoom, before: set[str]) -> None:
        after = set(room.users())
        joins, leaves = sorted(after - before), sorted(before - after)
        if not joins and not leaves:
            return
        frame = {"type": "presence_diff", "joins": joins, "leaves": leaves}
        for listener in list(room.listeners):
            listener.deliver(frame)
