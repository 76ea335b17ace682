"""One room's server: the single writer of the room's log while this node holds its lease.

Commands for the room, from sockets on any node, queue here and run one at a time, so seqs
are assigned in one place. Every append is fenced by the lease epoch inside Redis: when the
lease has moved on, the append is refused and this server stops itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from . import events
from .commands import Ack, Command, validate
from .config import ClusterConfig
from .errors import CommandError, Fenced, NotOwner
from .log import RoomClosed, RoomLog
from .ratelimit import SlidingWindowLimiter
from .registry import Lease

logger = logging.getLogger("cluster.room_server")

Checkpoint = Callable[[str, int], Awaitable[None]]
# Seqs are reserved outside Redis in blocks (hi/lo): before the room uses a seq above its
# reservation it records a new one, ``RESERVE_BLOCK`` higher, in the database. If Redis ever
# loses the room, the next owner starts above the reservation: seqs never go backwards.
RESERVE_BLOCK = 100


@dataclass
class MessageState:
    user: str
    body: str
    deleted: bool = False


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
        config: ClusterConfig,
        seq_floor: int = 0,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.slug = lease.slug
        self.lease = lease
        self._log = log
        self._config = config
        self._seq_floor = seq_floor
        self._checkpoint = checkpoint
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()  # None: stop
        self._limiter = SlidingWindowLimiter(*config.rate_limit)
        self.messages: OrderedDict[str, MessageState] = OrderedDict()
        self.last_seq = 0
        self._reserved = 0
        self.last_activity = time.monotonic()
        self.accepting = True
        self.task: asyncio.Task[None] | None = None
        self.fenced = False

    async def start(self) -> None:
        """Rebuild the hot state from the log, then serve."""
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
        for event in await self._log.tail(self.slug, self._config.state_window):
            self._apply(event)
        self.task = asyncio.get_running_loop().create_task(self._serve(), name=f"room:{self.slug}")

    async def submit(self, command: Command) -> Ack:
        if not self.accepting:
            raise NotOwner(self.slug)
        self.last_activity = time.monotonic()
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(command, future))
        return await future

    async def stop(self) -> None:
        """Stop taking commands; finish the one in hand; send the rest elsewhere."""
        self.accepting = False
        if self.task is not None and not self.task.done():
            await self._queue.put(None)
            try:
                await asyncio.wait_for(asyncio.shield(self.task), 2.0)
            except (TimeoutError, Exception):
                self.task.cancel()
        self._refuse_queued()

    async def _reserve(self) -> None:
        """Make sure the next seq lies inside a reservation recorded outside Redis."""
        if self._checkpoint is None or self.last_seq < self._reserved:
            return
        reservation = self.last_seq + RESERVE_BLOCK
        await self._checkpoint(self.slug, reservation)
        await self._log.set_reservation(self.slug, reservation)
        self._reserved = reservation

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

    async def _handle(self, command: Command) -> Ack:
        validate(command, max_body=self._config.max_body)
        if not self._limiter.allow(command.user):
            raise CommandError("rate_limited", "too many commands; slow down")
        now_ms = int(time.time() * 1000)
        target_id = ""
        if command.type == "send":
            event: events.Event = {
                "type": "message",
                "room": self.slug,
                "user": command.user,
                "body": command.body,
                "ts": now_ms,
                "client_id": command.client_id if command.client_id_given else None,
            }
        else:
            target = await self._message(command.id)
            if target is None:
                raise CommandError("not_found", f"no message {command.id!r} in this room")
            if target.user != command.user and not command.is_staff:
                raise CommandError("forbidden", "you can only change your own messages")
            if target.deleted:
                raise CommandError("not_found", f"message {command.id!r} was deleted")
            target_id = command.id
            event = {"type": command.type, "room": self.slug, "id": command.id}
            event["user"] = command.user
            if command.type == "edit":
                event["body"] = command.body
            event["ts"] = now_ms
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
                event_id=target_id,
            )
        except RoomClosed:
            raise CommandError("forbidden", "this room is archived") from None
        if not result.duplicate:
            event["seq"] = result.seq
            if command.type == "send":
                event["id"] = result.id
            self._apply(event)
            self.last_seq = max(self.last_seq, result.seq)
        return Ack(command.client_id, result.seq, result.id, result.duplicate)

    async def _message(self, message_id: str) -> MessageState | None:
        state = self.messages.get(message_id)
        if state is not None:
            return state
        seq = events.seq_of_message_id(message_id)
        if seq is None:
            return None
        original = await self._log.read_one(self.slug, seq)
        if original is None or original.get("type") != "message":
            return None
        # Older than the window: a later delete would be in the window only if it is recent,
        # so look for one among the events since (bounded by the log itself).
        state = MessageState(original["user"], original["body"])
        later = await self._log.read_all(self.slug, after=seq, until=self.last_seq)
        for event in later.events:
            if event.get("id") == message_id and event["type"] == "delete":
                state.deleted = True
        return state

    def _apply(self, event: dict[str, Any]) -> None:
        self.last_seq = max(self.last_seq, int(event["seq"]))
        kind = event.get("type")
        if kind == "message":
            self.messages[event["id"]] = MessageState(event["user"], event["body"])
            while len(self.messages) > self._config.state_window:
                self.messages.popitem(last=False)
        elif kind == "edit" and event["id"] in self.messages:
            self.messages[event["id"]].body = event["body"]
        elif kind == "delete" and event["id"] in self.messages:
            self.messages[event["id"]].deleted = True
