"""One room's server: the single writer of the room's log while this node holds its lease.

Commands for the room, from sockets on any node, queue here and run one at a time, so seqs
are assigned in one place. Every append is fenced by the lease epoch inside Redis: when the
lease has moved on, the append is refused and this server stops itself.

The server keeps the room's hot state as an LWW map (``room_state``). Each change's delta goes to
the room's state stream in the same atomic step as its event; snapshots compact the stream; a
node that takes the room over rebuilds exactly this state from snapshot plus deltas.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from . import events
from .commands import Ack, Command, validate
from .config import ClusterConfig
from .crdt import MAX_COUNTER, Timestamp
from .errors import CommandError, Fenced, NotOwner
from .log import RoomClosed, RoomLog
from .ratelimit import SlidingWindowLimiter
from .registry import Lease
from .room_state import RoomState
from .state_store import StateStore, delta_template, new_marker

logger = logging.getLogger("cluster.room_server")

Checkpoint = Callable[[str, int], Awaitable[None]]
# Seqs are reserved outside Redis in blocks (hi/lo): before the room uses a seq above its
# reservation it records a new one, ``RESERVE_BLOCK`` higher, in the database. If Redis ever
# loses the room, the next owner starts above the reservation: seqs never go backwards.
RESERVE_BLOCK = 100
# Deltas between snapshots: bounds both the state stream and the rebuild time of a take-over.
SNAPSHOT_EVERY = 200


@dataclass
class _Pending:
    command: Command
    future: asyncio.Future[Ack]


class RoomServer:
    def __init__(
        self,
        lease: Lease,
        *,
        log: RoomLog,
        store: StateStore,
        config: ClusterConfig,
        seq_floor: int = 0,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.slug = lease.slug
        self.lease = lease
        self._log = log
        self._store = store
        self._config = config
        self._seq_floor = seq_floor
        self._checkpoint = checkpoint
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()  # None: stop
        self._limiter = SlidingWindowLimiter(*config.rate_limit)
        self.state = RoomState(lease.node, config.state_window)
        self.last_seq = 0
        self._reserved = 0
        self._since_snapshot = 0
        self.last_activity = time.monotonic()
        self.accepting = True
        self.task: asyncio.Task[None] | None = None
        self.fenced = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the hot state (snapshot + deltas, or the log), then serve."""
        in_redis = await self._log.last_seq(self.slug)
        reserved_in_redis = await self._log.reservation(self.slug)
        if reserved_in_redis < self._seq_floor:
            # Redis lost (part of) the room since the last reservation: continue above it.
            logger.warning(
                "room %s: Redis knows seq %d, reservation %d < %d; continuing above it",
                self.slug, in_redis, reserved_in_redis, self._seq_floor,
            )  # fmt: skip
            self.last_seq = max(in_redis, self._seq_floor)
        else:
            self.last_seq = in_redis
        self._reserved = max(self._seq_floor, reserved_in_redis)
        await self._rebuild_state()
        self.task = asyncio.get_running_loop().create_task(self._serve(), name=f"room:{self.slug}")

    async def _rebuild_state(self) -> None:
        stored = await self._store.read(self.slug)
        if stored.state.entries() or stored.upto_seq:
            self.state.load(stored.state)
            return
        # No state stream (written before it existed, or lost on its own): derive the window
        # from the log, with timestamps that follow the log's order.
        for event in await self._log.tail(self.slug, self._config.state_window):
            stamp = Timestamp(int(event.get("ts", 0)), int(event["seq"]) % MAX_COUNTER, "log")
            self.state.apply(self.state.delta_for(event, stamp))

    async def submit(self, command: Command) -> Ack:
        if not self.accepting:
            raise NotOwner(self.slug)
        self.last_activity = time.monotonic()
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(command, future))
        return await future

    async def stop(self) -> None:
        """Stop taking commands, finish the one in hand, flush the state, refuse the rest
        (their senders retry at the next owner)."""
        self.accepting = False
        if self.task is not None and not self.task.done():
            await self._queue.put(None)
            try:
                async with asyncio.timeout(2.0):
                    await asyncio.shield(self.task)
            except (TimeoutError, Exception):
                self.task.cancel()
        self._refuse_queued()
        if not self.fenced:
            try:
                await self.snapshot()
            except Exception:
                logger.warning(
                    "could not flush the state of %s; the deltas still hold it", self.slug
                )

    @property
    def reserved(self) -> int:
        """The seq reservation recorded outside Redis (see RESERVE_BLOCK)."""
        return self._reserved

    async def snapshot(self) -> None:
        self.state.compact(self.last_seq)
        written = await self._store.write_snapshot(
            self.slug,
            node=self.lease.node,
            epoch=self.lease.epoch,
            state=self.state.map,
            upto_seq=self.last_seq,
        )
        if written:
            self._since_snapshot = 0

    def _refuse_queued(self) -> None:
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if pending is not None and not pending.future.done():
                pending.future.set_exception(NotOwner(self.slug))

    async def _serve(self) -> None:
        while True:
            pending = await self._queue.get()
            if pending is None:
                return
            try:
                ack = await self._handle(pending.command)
            except Fenced as exc:
                logger.warning("%s; stopping the room server", exc)
                self.fenced = True
                self.accepting = False
                pending.future.set_exception(NotOwner(self.slug, exc.owner))
                self._refuse_queued()
                return
            except Exception as exc:  # delivered to the caller; the server goes on
                if not pending.future.done():
                    pending.future.set_exception(exc)
                if not isinstance(exc, CommandError):
                    raise
            else:
                if not pending.future.done():
                    pending.future.set_result(ack)

    # -- commands --------------------------------------------------------------------------

    async def _handle(self, command: Command) -> Ack:
        validate(command, max_body=self._config.max_body)
        if not self._limiter.allow(command.user):
            raise CommandError("rate_limited", "too many commands; slow down")
        event = await self._event_for(command)
        ts = self.state.clock.now()
        marker = new_marker(command.body, command.user, command.id)
        provisional = {**event, "seq": marker}
        if command.type == "send":
            provisional["id"] = "m" + marker
        delta = self.state.delta_for(provisional, ts)
        try:
            await self._reserve()
            result = await self._log.append(
                self.slug,
                node=self.lease.node,
                epoch=self.lease.epoch,
                seq_floor=self.last_seq,
                event=event,
                user=command.user,
                client_id=command.client_id,
                event_id="" if command.type == "send" else command.id,
                state_delta=delta_template(delta, marker) if delta.entries() else "",
                seq_placeholder=marker,
            )
        except RoomClosed:
            raise CommandError("forbidden", "this room is archived") from None
        if not result.duplicate:
            event["seq"] = result.seq
            if command.type == "send":
                event["id"] = result.id
            self.state.apply(self.state.delta_for(event, ts))
            self.last_seq = max(self.last_seq, result.seq)
            self._since_snapshot += 1
            if self._since_snapshot >= SNAPSHOT_EVERY:
                await self.snapshot()
        return Ack(command.client_id, result.seq, result.id, result.duplicate)

    async def _event_for(self, command: Command) -> events.Event:
        now_ms = int(time.time() * 1000)
        if command.type == "send":
            return {
                "type": "message",
                "room": self.slug,
                "user": command.user,
                "body": command.body,
                "ts": now_ms,
                "client_id": command.client_id if command.client_id_given else None,
            }
        target = await self._message(command.id)
        if target is None:
            raise CommandError("not_found", f"no message {command.id!r} in this room")
        if target["user"] != command.user and not command.is_staff:
            raise CommandError("forbidden", "you can only change your own messages")
        if target["deleted"]:
            raise CommandError("not_found", f"message {command.id!r} was deleted")
        event: events.Event = {"type": command.type, "room": self.slug, "id": command.id}
        event["user"] = command.user
        if command.type == "edit":
            event["body"] = command.body
        event["ts"] = now_ms
        return event

    async def _reserve(self) -> None:
        """Make sure the next seq lies inside a reservation recorded outside Redis."""
        if self._checkpoint is None or self.last_seq < self._reserved:
            return
        reservation = self.last_seq + RESERVE_BLOCK
        await self._checkpoint(self.slug, reservation)
        await self._log.set_reservation(self.slug, reservation)
        self._reserved = reservation

    async def _message(self, message_id: str) -> dict[str, Any] | None:
        found = self.state.message(message_id)
        if found is not None:
            return found
        # Older than the window: read it, and any delete of it since, from the log.
        seq = events.seq_of_message_id(message_id)
        if seq is None:
            return None
        original = await self._log.read_one(self.slug, seq)
        if original is None or original.get("type") != "message":
            return None
        later = await self._log.read_all(self.slug, after=seq, until=self.last_seq)
        deleted = any(e.get("id") == message_id and e["type"] == "delete" for e in later.events)
        return {"user": original["user"], "body": original["body"], "deleted": deleted}
