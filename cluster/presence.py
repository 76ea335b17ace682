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

A join storm must not cost O(members²) frames, so both directions are batched per room:

- writing: a socket's arrival or departure only marks its user; one writer task writes every
  marked user of a room in one pipeline and announces them in ONE message, a round at a time
  (what arrives while a round is in flight goes in the next);
- showing: a change of who is present only marks the room; ``window_s`` later one
  ``presence_diff`` with every join and leave of the window goes to our sockets. A user who
  joined and left inside one window is in neither list (nothing to tell), unless a socket took
  a snapshot (``users``) in between: then the user's final state is repeated in the diff, so
  that the snapshot plus the diff is right. A repeated join or leave is a no-op for a socket
  that already had it (a diff is applied as set operations).
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
from .publishing import PUBLISH, known_publish_command, publish
from .tasks import TaskGroup

logger = logging.getLogger("cluster.presence")

Frame = dict[str, Any]
Entry = tuple[str, str]  # (node, user)
REPAIR_BATCH = 200  # rooms read per round trip by the repair
WINDOW_S = 0.1  # changes of one room shown to its sockets together, at most this late


@dataclass(eq=False)
class RoomPresence:
    slug: str
    local: Counter[str] = field(default_factory=Counter)  # our sockets per user: the truth
    remote: set[Entry] = field(default_factory=set)  # other nodes' (node, user) with sockets
    remote_users: Counter[str] = field(default_factory=Counter)  # entries in ``remote`` per user
    members: set[str] = field(default_factory=set)  # present now: ours or in ``remote``
    shown: set[str] = field(default_factory=set)  # what our sockets were told (window flushed)
    # Users whose presence flipped in this window -> the number of their last flip.
    changed: dict[str, int] = field(default_factory=dict)
    flips: int = 0
    snapshot_at: int | None = None  # a snapshot was taken this window, after this flip
    shown_at: float = float("-inf")  # loop time of the last diff shown
    unwritten: set[str] = field(default_factory=set)  # our counts to write to Redis
    unannounced: set[str] = field(default_factory=set)  # ...and to announce once written
    open: bool = False  # we have sockets in the room (its channel is subscribed)
    dirty: bool = False  # a write of ours failed: Redis may differ from ``local``
    # While a repair's read is in flight: entries announced meanwhile, which the read's
    # (possibly older) snapshot must not overwrite.
    touched: set[Entry] | None = None

    def users(self) -> set[str]:
        return set(self.members)

    def recount(self, user: str) -> bool:
        """Bring ``members`` up to date for ``user``; True if the user's presence flipped."""
        present = self.local[user] > 0 or self.remote_users[user] > 0
        if present == (user in self.members):
            return False
        if present:
            self.members.add(user)
        else:
            self.members.discard(user)
        self.flips += 1
        self.changed[user] = self.flips
        return True

    def add_remote(self, entry: Entry) -> bool:
        if entry in self.remote:
            return False
        self.remote.add(entry)
        self.remote_users[entry[1]] += 1
        return self.recount(entry[1])

    def discard_remote(self, entry: Entry) -> bool:
        if entry not in self.remote:
            return False
        self.remote.discard(entry)
        self.remote_users[entry[1]] -= 1
        if self.remote_users[entry[1]] <= 0:
            del self.remote_users[entry[1]]
        return self.recount(entry[1])

    def set_remote(self, entries: set[Entry]) -> bool:
        flipped = False
        for entry in self.remote - entries:
            flipped = self.discard_remote(entry) or flipped
        for entry in entries - self.remote:
            flipped = self.add_remote(entry) or flipped
        return flipped


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
        window_s: float = WINDOW_S,
    ) -> None:
        self._redis = redis
        self._window = window_s
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
        self._timers: dict[str, asyncio.TimerHandle] = {}  # rooms with a diff to show, due then
        self._unwritten: set[str] = set()  # rooms with counts to write (the writer's queue)
        self._write_wake = asyncio.Event()
        self._write_lock = asyncio.Lock()
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
            self._tasks.spawn(self._write_loop(), "write")
            if self._unwritten:  # marked while we were stopped (a frozen loop, in tests)
                self._write_wake.set()

    async def stop(self) -> None:
        """Stop repairing, then remove our entries everywhere (best effort: a node that is
        gone is cleared by its peers, or by itself when it starts again)."""
        await self._tasks.stop()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._unwritten.clear()
        # Also the users whose last socket went while the writer was not done with them.
        rooms = [r for r in self.rooms.values() if r.local or r.unwritten]
        if rooms:
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for room in rooms:
                        users = set(room.local) | room.unwritten
                        pipe.hdel(RoomKeys(room.slug).presence, *self._fields(users))
                        self._announce(pipe, room.slug, dict.fromkeys(users, False))
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
        room.set_remote({e for e in remote if self._is_live(e[0])})
        # No socket of ours is in the room yet: the first one learns it all from ``users``.
        room.shown = set(room.members)
        room.changed.clear()
        room.snapshot_at = None

    def close(self, slug: str) -> None:
        room = self.rooms.get(slug)
        if room is None:
            return
        room.open = False
        room.set_remote(set())
        room.shown.clear()
        room.changed.clear()
        room.snapshot_at = None
        timer = self._timers.pop(slug, None)
        if timer is not None:
            timer.cancel()
        if not room.dirty and not room.local and not room.unwritten:
            del self.rooms[slug]

    def is_open(self, slug: str) -> bool:
        room = self.rooms.get(slug)
        return room is not None and room.open

    def users(self, slug: str) -> list[str]:
        """Who is present now, for a socket's ``presence_state``: the diffs shown after it
        make it right (see the module's docstring), so it is marked as a snapshot."""
        room = self.rooms.get(slug)
        if room is None:
            return []
        if room.changed and room.snapshot_at is None:
            room.snapshot_at = room.flips
        return sorted(room.members)

    # Counting is synchronous and writing is not: a socket is counted in the same step as it is
    # added (nothing can cancel in between), and a write that fails or is cancelled is repaired.

    def arrive(self, slug: str, user: str) -> bool:
        """One more socket of ``user`` here; True if the user is new here (to announce)."""
        room = self.rooms[slug]
        room.local[user] += 1
        if room.recount(user):
            self._show_soon(room)
        return room.local[user] == 1

    def leave(self, slug: str, user: str) -> bool:
        """One socket of ``user`` fewer here; True if it was the user's last one here."""
        room = self.rooms.get(slug)
        if room is None or room.local[user] <= 0:
            return False  # (after ``stop``, which cleared our entries already)
        room.local[user] -= 1
        if room.local[user] == 0:
            del room.local[user]
        if room.recount(user):
            self._show_soon(room)
        return user not in room.local

    async def write(self, slug: str, user: str, *, announce: bool) -> None:
        """Have our absolute count of ``user`` in ``slug`` written (HSET n, HDEL at 0), then
        announced if asked, by the writer's next round: it does not wait for Redis (a
        socket's admission must not), and a failed write is repaired."""
        room = self.rooms.get(slug)
        if room is None:
            return
        room.unwritten.add(user)
        if announce:
            room.unannounced.add(user)
        self._unwritten.add(slug)
        self._write_wake.set()

    async def flush_writes(self) -> None:
        """Write (and announce) every count marked so far, now (tests, shutdown paths)."""
        await self._write_round()
        while self._unwritten:
            await self._write_round()

    async def _write_loop(self) -> None:
        while True:
            await self._write_wake.wait()
            self._write_wake.clear()
            await self._write_round()

    async def _write_round(self) -> None:
        async with self._write_lock:  # a flush waits for the round in flight, too
            for slug in list(self._unwritten):
                # One at a time off the queue: a round cut short (cancelled) leaves the rest.
                self._unwritten.discard(slug)
                await self._write_room(slug)

    async def _write_room(self, slug: str) -> None:
        async with self._locks.hold(slug):
            room = self.rooms.get(slug)
            if room is None or not room.unwritten:
                return
            users, room.unwritten = room.unwritten, set()
            announce, room.unannounced = room.unannounced, set()
            key = RoomKeys(slug).presence
            counts = {u: room.local.get(u, 0) for u in users}
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    present = {
                        presence_field(self._node, u): str(n) for u, n in counts.items() if n
                    }
                    if present:
                        # The index first: an entry is never where a restart would not find it.
                        pipe.sadd(self._index, slug)
                        pipe.hset(key, mapping=present)
                    gone = [u for u, n in counts.items() if not n]
                    if gone:
                        pipe.hdel(key, *self._fields(gone))
                    await pipe.execute()
                if announce:
                    # Only once the entries are right: peers reload mirrors from the hash.
                    async with self._redis.pipeline(transaction=False) as pipe:
                        self._announce(pipe, slug, {u: counts.get(u, 0) > 0 for u in announce})
                        await pipe.execute()
            except asyncio.CancelledError:
                room.dirty = True  # kept (if closed) until the repair has made Redis right
                # Still to write: ``stop`` (which cancels us) clears what is marked here.
                room.unwritten |= users
                room.unannounced |= announce
                self._wake.set()
                raise
            except Exception as exc:
                self.write_failures += 1
                room.dirty = True
                self._wake.set()
                logger.warning("presence write in %s failed (%s); repairing", slug, exc)
            finally:
                if not (room.open or room.local or room.dirty or room.unwritten):
                    self.rooms.pop(slug, None)

    # -- what peers tell us ----------------------------------------------------------------

    def on_message(self, slug: str, data: str) -> None:
        """A ``P`` announcement on the room channel: ``{"node", "users": {user: present}}``
        (one per writer round), or the single ``{"node", "user", "present"}`` of older nodes."""
        room = self.rooms.get(slug)
        if room is None or not room.open:
            return
        try:
            message = json.loads(data)
            node = message["node"]
            if "users" in message:
                users = message["users"]
                if not isinstance(users, dict) or not all(
                    isinstance(p, bool) for p in users.values()
                ):
                    raise TypeError("users is not an object of booleans")
                changes = list(users.items())
            else:
                if not isinstance(message["user"], str):
                    raise TypeError("user is not a string")
                changes = [(message["user"], bool(message["present"]))]
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("malformed presence message in %s: %.200s", slug, data)
            return
        if not isinstance(node, str) or node == self._node:
            return  # our own echo: our sockets are the truth for our entries
        self._heard[node] = asyncio.get_running_loop().time()
        flipped = False
        for user, present in changes:
            entry = (node, user)
            if room.touched is not None:
                room.touched.add(entry)
            if present:
                flipped = room.add_remote(entry) or flipped
            else:
                flipped = room.discard_remote(entry) or flipped
        if flipped:
            self._show_soon(room)

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
            if room.set_remote(room.remote - gone):
                self._show_soon(room)
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
            parsed = [parse_presence_field(f) for f in mine]
            async with self._redis.pipeline(transaction=False) as pipe:
                self._announce(pipe, slug, {p[1]: False for p in parsed if p is not None})
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
            if room.set_remote((fresh - room.touched) | (room.remote & room.touched)):
                self._show_soon(room)

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
                changes = {**dict.fromkeys(stale, False), **dict.fromkeys(joins, True)}
                async with self._redis.pipeline(transaction=False) as pipe:
                    self._announce(pipe, room.slug, changes)
                    await pipe.execute()
            if not room.open and not room.local and not room.unwritten:
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

    def _announce(self, pipe: Any, slug: str, users: dict[str, bool]) -> None:
        """One message for every user of a room that came or went: peers' mirrors follow."""
        if users:
            payload = json.dumps({"node": self._node, "users": users})
            # SPUBLISH on a Redis Cluster 7+ (cluster/publishing.py): the hub asked the server
            # at start, before any presence is written, and cached the answer with the client.
            command = known_publish_command(self._redis) or PUBLISH
            publish(pipe, RoomKeys(slug).channel, "P" + payload, command)

    def _show_soon(self, room: RoomPresence) -> None:
        """Our sockets hear of the room's changes at once if nothing was shown for a window
        (a lone join is not delayed), else together at the window's end."""
        if room.slug in self._timers or not room.open:
            return
        loop = asyncio.get_running_loop()
        due = room.shown_at + self._window
        if due <= loop.time():
            self._show(room.slug)
        else:
            self._timers[room.slug] = loop.call_at(due, self._show, room.slug)

    def flush_shows(self) -> None:
        """Show every pending change now (tests; a window's end does it otherwise)."""
        for slug in list(self._timers):
            self._timers.pop(slug).cancel()
            self._show(slug)

    def _show(self, slug: str) -> None:
        """Tell our sockets what changed in the room since they were last told."""
        self._timers.pop(slug, None)
        room = self.rooms.get(slug)
        if room is None or not room.open:
            return
        joins: list[str] = []
        leaves: list[str] = []
        snapshot_at = room.snapshot_at
        for user, flip in room.changed.items():
            present = user in room.members
            # Repeated when it equals what was shown but flipped after a snapshot: the
            # snapshot's socket may hold the other state.
            if present != (user in room.shown) or (snapshot_at is not None and flip > snapshot_at):
                (joins if present else leaves).append(user)
            if present:
                room.shown.add(user)
            else:
                room.shown.discard(user)
        room.changed.clear()
        room.snapshot_at = None
        if joins or leaves:
            room.shown_at = asyncio.get_running_loop().time()
            frame = {"type": "presence_diff", "joins": sorted(joins), "leaves": sorted(leaves)}
            self._broadcast(slug, frame)
