"""Presence: who is in each room, cluster-wide, as this node's sockets see it.

Each room has a hash in Redis with one field per node and user (``keys.presence_field``) whose
value is how many sockets that user has on that node. A node writes only its own fields, and
always the ABSOLUTE count it holds (HSET n, or HDEL at 0), never an increment: a counter that
peers or a lost Redis reset under us would otherwise drift below zero and hide users who are
connected. The node's sockets are the truth; Redis is repaired from them:

- at once on every change (a socket comes or goes), announced on the room channel (``P``);
- whenever the node (re)joins the cluster: after a false death (its loop was frozen past the
  lease and peers deleted its entries), after Redis lost them (restart, pub/sub reconnect),
  after our own poll saw ourselves stale; everything is rewritten and announced again;
- every ``repair_interval_s``: each room's hash is read, our fields rewritten where they differ
  from our sockets (a failed HSET or HDEL), and the mirror of the other nodes' fields reloaded
  (an announcement lost with a pub/sub connection).

The mirror turns per-node entries into per-user joins and leaves for our sockets (a user with
three tabs on two nodes is one presence); our own users come from our sockets, not from Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from . import keys
from .delivery import RoomLocks
from .keys import RoomKeys, parse_presence_field, presence_field
from .tasks import TaskGroup

logger = logging.getLogger("cluster.presence")

Frame = dict[str, Any]
Entry = tuple[str, str]  # (node, user)
REPAIR_BATCH = 200  # rooms read per round trip by the repair


@dataclass(eq=False)
class RoomPresence:
    slug: str
    local: Counter[str] = field(default_factory=Counter)  # our sockets per user: the truth
    remote: set[Entry] = field(default_factory=set)  # other nodes' (node, user) with sockets
    shown: set[str] = field(default_factory=set)  # what our sockets were last told
    open: bool = False  # we have sockets in the room (its channel is subscribed)
    dirty: bool = False  # a write of ours failed: Redis may differ from ``local``
    # While a repair's read is in flight: entries announced meanwhile, which the read's
    # (possibly older) snapshot must not overwrite.
    touched: set[Entry] | None = None

    def users(self) -> set[str]:
        return {u for u, n in self.local.items() if n > 0} | {u for _, u in self.remote}


def _count(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class Presence:
    def __init__(
        self,
        redis: Redis,
        node: str,
        *,
        is_live: Callable[[str], bool],
        locks: RoomLocks,
        broadcast: Callable[[str, Frame], None],
        repair_interval_s: float = 2.0,
    ) -> None:
        self._redis = redis
        self._node = node
        self._is_live = is_live
        self._locks = locks
        self._broadcast = broadcast
        self._interval = min(5.0, max(0.5, repair_interval_s))
        self._index = keys.node_presence_key(node)
        self.rooms: dict[str, RoomPresence] = {}
        self._wake = asyncio.Event()
        self._rejoin = False  # the next repair rewrites and announces everything
        self._tasks = TaskGroup("presence")
        self._started = False
        # When each node last announced something: a node that announces itself is alive even
        # if our membership has not seen its heartbeat again yet (it just re-joined).
        self._heard: dict[str, float] = {}
        self.repairs = 0  # fields rewritten or deleted by repairs
        self.write_failures = 0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._tasks.spawn(self._repair_loop(), "repair")

    async def stop(self) -> None:
        """Stop repairing, then remove our entries everywhere (best effort: a node that is
        gone is cleared by its peers, or by itself when it starts again)."""
        await self._tasks.stop()
        rooms = [r for r in self.rooms.values() if r.local]
        if rooms:
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for room in rooms:
                        pipe.hdel(RoomKeys(room.slug).presence, *self._fields(room.local))
                        for user in room.local:
                            self._announce(pipe, room.slug, user, present=False)
                    await pipe.execute()
            except Exception:
                logger.warning("could not clear our presence in %d rooms", len(rooms))
        self.rooms.clear()

    def rejoin(self) -> None:
        """We (re)joined the cluster, or Redis may have lost our entries: rewrite them all
        and announce them again, soon (peers may have dropped us from their mirrors)."""
        self._rejoin = True
        self._wake.set()

    def poke(self) -> None:
        """Repair and reload the mirrors soon (a node joined: its entries are worth a look)."""
        self._wake.set()

    # -- rooms (the caller holds the room's lock) -----------------------------------------

    async def open(self, slug: str) -> None:
        room = self.rooms.get(slug)
        if room is None:
            room = self.rooms[slug] = RoomPresence(slug)
        if room.open:
            return
        room.open = True
        try:
            raw = await self._redis.hgetall(RoomKeys(slug).presence)
        except Exception:
            logger.warning("could not load presence of %s; the repair will", slug)
            room.dirty = True
            self._wake.set()
            return
        _, remote = self._parse(raw)
        room.remote = {e for e in remote if self._is_live(e[0])}
        self._show(room)

    def close(self, slug: str) -> None:
        room = self.rooms.get(slug)
        if room is None:
            return
        room.open = False
        room.remote.clear()
        room.shown.clear()
        if not room.dirty and not room.local:
            del self.rooms[slug]

    def users(self, slug: str) -> list[str]:
        room = self.rooms.get(slug)
        return sorted(room.shown) if room is not None else []

    # Counting is synchronous and writing is not: a socket is counted in the same step as it is
    # added (nothing can cancel in between), and a write that fails or is cancelled is repaired.

    def arrive(self, slug: str, user: str) -> bool:
        """One more socket of ``user`` here; True if the user is new here (to announce)."""
        room = self.rooms[slug]
        room.local[user] += 1
        self._show(room)
        return room.local[user] == 1

    def leave(self, slug: str, user: str) -> bool:
        """One socket of ``user`` fewer here; True if it was the user's last one here."""
        room = self.rooms.get(slug)
        if room is None or room.local[user] <= 0:
            return False  # (after ``stop``, which cleared our entries already)
        room.local[user] -= 1
        if room.local[user] == 0:
            del room.local[user]
        self._show(room)
        return user not in room.local

    async def write(self, slug: str, user: str, *, announce: bool) -> None:
        """Write our absolute count of ``user`` in ``slug`` (HSET n, HDEL at 0), then announce
        it if asked. Never raises but for cancellation: a failed write is repaired."""
        room = self.rooms.get(slug)
        if room is None:
            return
        key = RoomKeys(room.slug).presence
        count = room.local.get(user, 0)
        try:
            if count > 0:
                async with self._redis.pipeline(transaction=False) as pipe:
                    # The index first: an entry is never where a restart would not find it.
                    pipe.sadd(self._index, room.slug)
                    pipe.hset(key, presence_field(self._node, user), str(count))
                    await pipe.execute()
            else:
                await self._redis.hdel(key, presence_field(self._node, user))
            if announce:
                # Only once the entry is right: peers reload mirrors from the hash.
                async with self._redis.pipeline(transaction=False) as pipe:
                    self._announce(pipe, room.slug, user, present=count > 0)
                    await pipe.execute()
        except asyncio.CancelledError:
            room.dirty = True  # kept (if closed) until the repair has made Redis right
            self._wake.set()
            raise
        except Exception as exc:
            self.write_failures += 1
            room.dirty = True
            self._wake.set()
            logger.warning("presence write in %s failed (%s); repairing", room.slug, exc)

    # -- what peers tell us ----------------------------------------------------------------

    def on_message(self, slug: str, data: str) -> None:
        """A ``P`` announcement on the room channel."""
        room = self.rooms.get(slug)
        if room is None or not room.open:
            return
        try:
            message = json.loads(data)
            node, user, present = message["node"], message["user"], bool(message["present"])
        except (ValueError, KeyError, TypeError):
            logger.warning("malformed presence message in %s: %.200s", slug, data)
            return
        if not isinstance(node, str) or not isinstance(user, str) or node == self._node:
            return  # our own echo: our sockets are the truth for our entries
        entry = (node, user)
        self._heard[node] = asyncio.get_running_loop().time()
        if room.touched is not None:
            room.touched.add(entry)
        if present:
            room.remote.add(entry)
        else:
            room.remote.discard(entry)
        self._show(room)

    async def on_nodes_left(self, left: set[str]) -> None:
        """Nodes presumed dead: their users leave our sockets' views, their entries go.
        Never ourselves: our own poll can find our heartbeat stale after a frozen loop, and
        our sockets are still here (the heartbeat re-joins us; see ``rejoin``)."""
        left = left - {self._node}
        if not left:
            return
        for room in list(self.rooms.values()):
            gone = {e for e in room.remote if e[0] in left}
            if not gone:
                continue
            room.remote -= gone
            self._show(room)
            try:
                await self._redis.hdel(
                    RoomKeys(room.slug).presence, *(presence_field(n, u) for n, u in gone)
                )
            except Exception:
                logger.warning("could not clear presence of dead nodes in %s", room.slug)

    def on_nodes_joined(self, joined: set[str]) -> None:
        if self._node in joined:
            # Our own poll had listed us as left (a frozen loop): peers did too.
            self.rejoin()
        else:
            self.poke()

    # -- reads -------------------------------------------------------------------------------

    async def online(self, slugs: list[str]) -> dict[str, list[str]]:
        """Users present in each room, cluster-wide, in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for slug in slugs:
                pipe.hgetall(RoomKeys(slug).presence)
            rows = await pipe.execute()
        result: dict[str, list[str]] = {}
        for slug, row in zip(slugs, rows, strict=True):
            _, remote = self._parse(row)
            users = {u for n, u in remote if self._is_live(n)}
            room = self.rooms.get(slug)
            if room is not None:
                users |= {u for u, n in room.local.items() if n > 0}
            result[slug] = sorted(users)
        return result

    async def clear_stale(self) -> int:
        """At start: remove presence a previous process under our name left behind (it was
        killed, or restarted faster than its peers noticed). Returns the entries removed."""
        removed = 0
        for slug in await self._redis.smembers(self._index):
            key = RoomKeys(slug).presence
            mine = [f for f in await self._redis.hkeys(key) if self._is_mine(f)]
            if not mine:
                continue
            await self._redis.hdel(key, *mine)
            removed += len(mine)
            async with self._redis.pipeline(transaction=False) as pipe:
                for f in mine:
                    parsed = parse_presence_field(f)
                    if parsed is not None:
                        self._announce(pipe, slug, parsed[1], present=False)
                await pipe.execute()
        await self._redis.delete(self._index)
        return removed

    # -- repair ------------------------------------------------------------------------------

    async def _repair_loop(self) -> None:
        backoff = self._interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._wake.wait()
            self._wake.clear()
            rejoin, self._rejoin = self._rejoin, False
            try:
                await self.repair(rejoin=rejoin)
                backoff = self._interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._rejoin = self._rejoin or rejoin
                backoff = min(5.0, backoff * 2)
                logger.warning("presence repair failed (%s); retrying in %.1fs", exc, backoff)

    async def repair(self, *, rejoin: bool = False) -> None:
        """Make Redis match our sockets in every room we know, and reload the mirrors.
        ``rejoin``: rewrite and announce every entry of ours, whatever Redis holds."""
        slugs = list(self.rooms)
        for start in range(0, len(slugs), REPAIR_BATCH):
            batch = [self.rooms[s] for s in slugs[start : start + REPAIR_BATCH] if s in self.rooms]
            for room in batch:
                room.touched = set()
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    present = [r.slug for r in batch if r.local]
                    if present:
                        pipe.sadd(self._index, *present)
                    for room in batch:
                        pipe.hgetall(RoomKeys(room.slug).presence)
                    replies = await pipe.execute()
                rows = replies[1:] if present else replies
                for room, raw in zip(batch, rows, strict=True):
                    await self._repair_room(room, raw, rejoin=rejoin)
            finally:
                for room in batch:
                    room.touched = None

    async def _repair_room(self, room: RoomPresence, raw: dict[str, str], *, rejoin: bool) -> None:
        ours, remote = self._parse(raw)
        wanted = {u: n for u, n in room.local.items() if n > 0}
        if rejoin or room.dirty or ours != wanted:
            try:
                await self._rewrite(room, stale=set(ours) - set(wanted), rejoin=rejoin, had=ours)
            except Exception as exc:
                room.dirty = True
                logger.warning("presence repair in %s failed (%s)", room.slug, exc)
        if room.open and room.touched is not None:
            now = asyncio.get_running_loop().time()

            def alive(entry: Entry) -> bool:
                # A node that announced this entry lately is alive, if not yet in our
                # membership (it re-joined after a false death a moment ago).
                heard = self._heard.get(entry[0])
                recent = heard is not None and now - heard < self._interval
                return self._is_live(entry[0]) or (recent and entry in room.remote)

            # The snapshot may predate announcements received since it was asked for.
            fresh = {e for e in remote if alive(e)}
            room.remote = (fresh - room.touched) | (room.remote & room.touched)
            self._show(room)

    async def _rewrite(
        self, room: RoomPresence, *, stale: set[str], rejoin: bool, had: dict[str, int]
    ) -> None:
        async with self._locks.hold(room.slug):
            if self.rooms.get(room.slug) is not room:
                return  # closed and gone (or opened again) while we waited
            # Under the room's lock our sockets cannot change: this is exactly what we hold.
            wanted = {u: n for u, n in room.local.items() if n > 0}
            stale = stale - set(wanted)
            key = RoomKeys(room.slug).presence
            async with self._redis.pipeline(transaction=False) as pipe:
                if wanted:
                    pipe.sadd(self._index, room.slug)
                    fields = {presence_field(self._node, u): str(n) for u, n in wanted.items()}
                    pipe.hset(key, mapping=fields)
                if stale:
                    pipe.hdel(key, *self._fields(stale))
                await pipe.execute()
            room.dirty = False
            self.repairs += len(stale) + sum(1 for u, n in wanted.items() if had.get(u) != n)
            # Announced only once the entries are right: peers reload mirrors from the hash.
            joins = [u for u in wanted if rejoin or u not in had]
            if joins or stale:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for user in joins:
                        self._announce(pipe, room.slug, user, present=True)
                    for user in stale:
                        self._announce(pipe, room.slug, user, present=False)
                    await pipe.execute()
            if not room.open and not room.local:
                del self.rooms[room.slug]

    # -- helpers -----------------------------------------------------------------------------

    def _parse(self, raw: dict[str, str]) -> tuple[dict[str, int], set[Entry]]:
        """Our own fields (user -> count, as written) and other nodes' present users."""
        ours: dict[str, int] = {}
        remote: set[Entry] = set()
        for name, value in raw.items():
            parsed = parse_presence_field(name)
            if parsed is None:
                continue
            node, user = parsed
            if node == self._node:
                ours[user] = _count(value)
            elif _count(value) > 0:
                remote.add((node, user))
        return ours, remote

    def _is_mine(self, name: str) -> bool:
        parsed = parse_presence_field(name)
        return parsed is not None and parsed[0] == self._node

    def _fields(self, users: Iterable[str]) -> list[str]:
        return [presence_field(self._node, u) for u in users]

    def _announce(self, pipe: Any, slug: str, user: str, *, present: bool) -> None:
        payload = json.dumps({"node": self._node, "user": user, "present": present})
        pipe.publish(RoomKeys(slug).channel, "P" + payload)

    def _show(self, room: RoomPresence) -> None:
        """Tell our sockets what changed since they were last told."""
        now = room.users()
        joins, leaves = sorted(now - room.shown), sorted(room.shown - now)
        room.shown = now
        if joins or leaves:
            self._broadcast(room.slug, {"type": "presence_diff", "joins": joins, "leaves": leaves})
