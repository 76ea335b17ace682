"""One room's server: the single writer of the room's log while this node holds its lease.

Commands for the room, from sockets on any node, queue here and run one at a time, so seqs
are assigned in one place. Every append is fenced by the lease epoch inside Redis: when the
lease has moved on, the append is refused and this server stops itself.

The server keeps the room's hot state as an LWW map (``room_state``). Each change's delta goes to
the room's state stream in the same atomic step as its event; snapshots compact the stream; a
node that takes the room over rebuilds exactly this state from snapshot plus deltas.

Every command that enters the queue is answered, whatever happens to the server: an ack, a
``CommandError`` (refused: never retried), or a ``Retryable`` error (the router tries again, at
this server after a resync or at the room's next owner). Nothing waits without a deadline.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from . import events
from .commands import Ack, Command, validate
from .config import ClusterConfig
from .crdt import MAX_COUNTER, Timestamp
from .errors import (
    TRANSIENT_REDIS_ERRORS,
    CommandError,
    Fenced,
    NotOwner,
    RoomUnavailable,
)
from .history import REFILL_EVENTS, Archive
from .log import RoomClosed, RoomLog
from .ratelimit import SlidingWindowLimiter
from .registry import Lease
from .room_state import RoomState
from .seq_recovery import AskAll, Reservation, append_reserved, recover_start
from .state_store import StateStore, delta_template, new_marker
from .stats import NodeStats

logger = logging.getLogger("cluster.room_server")

Checkpoint = Callable[[str, int], Awaitable[None]]
Clock = Callable[[], float]
# Seqs are reserved outside Redis in blocks (see seq_recovery): if Redis ever loses the room,
# the next owner starts above the reservation: seqs never go backwards.
# Deltas between snapshots: bounds both the state stream and the rebuild time of a take-over.
SNAPSHOT_EVERY = 200
# Acks of recent commands kept in memory, so that a re-send is recognised without a Redis call
# (Redis's dedupe keys still answer for older ones and for those of a previous owner).
RECENT_ACKS = 10_000
# How long ``stop`` lets the command in hand finish before cancelling it.
STOP_GRACE_S = 2.0


class RoomServerState(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"  # finishing the command in hand; the queue is refused
    STOPPED = "stopped"
    FENCED = "fenced"  # the lease moved on: whatever we believe, we may not write
    FAILED = "failed"  # crashed; the supervisor decides whether to restart


_TRANSITIONS: dict[RoomServerState, frozenset[RoomServerState]] = {
    RoomServerState.STARTING: frozenset(
        {RoomServerState.SERVING, RoomServerState.FAILED, RoomServerState.STOPPED}
    ),
    RoomServerState.SERVING: frozenset(
        {RoomServerState.STOPPING, RoomServerState.FENCED, RoomServerState.FAILED}
    ),
    RoomServerState.STOPPING: frozenset(
        {RoomServerState.STOPPED, RoomServerState.FENCED, RoomServerState.FAILED}
    ),
    RoomServerState.STOPPED: frozenset(),
    RoomServerState.FENCED: frozenset(),
    RoomServerState.FAILED: frozenset(),
}


@dataclass
class _Pending:
    command: Command
    future: asyncio.Future[Ack]
    deadline: float | None  # loop time after which nobody waits for the answer


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
        clock: Clock = time.monotonic,
        ask_all: AskAll | None = None,
        predecessor_last: int | None = None,
        archive: Archive | None = None,
        stats: NodeStats | None = None,
    ) -> None:
        self._stats = stats if stats is not None else NodeStats()
        self._ask_all = ask_all
        self._archive = archive
        # A planned hand-off's last seq: checked against Redis on the first load only.
        self._predecessor_last = predecessor_last
        self.slug = lease.slug
        self.lease = lease
        self._log = log
        self._store = store
        self._config = config
        self._seq_floor = seq_floor
        self._checkpoint = checkpoint
        self._clock = clock
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()  # None: stop
        self._limiter = SlidingWindowLimiter(*config.rate_limit)  # per principal
        self._address_limiter = SlidingWindowLimiter(*config.rate_limit_per_address)
        self._commands_seen = 0
        self._recent: OrderedDict[tuple[str, str], Ack] = OrderedDict()
        self._current: _Pending | None = None
        # Set when Redis failed in the middle of a command: it may or may not have been
        # applied, so the hot state is re-read from Redis before the next command.
        self._uncertain = False
        self.state = RoomState(lease.node, config.state_window)
        self.status = RoomServerState.STARTING
        self.last_seq = 0
        self._reservation = Reservation(self.slug, checkpoint, reserved=0)
        self._since_snapshot = 0
        self.last_activity = clock()
        self.task: asyncio.Task[None] | None = None

    # -- state -----------------------------------------------------------------------------

    def _become(self, status: RoomServerState) -> None:
        if status is self.status:
            return
        if status not in _TRANSITIONS[self.status]:
            raise RuntimeError(f"room server {self.slug}: {self.status.value} -> {status.value}")
        self.status = status

    @property
    def accepting(self) -> bool:
        return self.status is RoomServerState.SERVING

    @property
    def fenced(self) -> bool:
        return self.status is RoomServerState.FENCED

    @property
    def reserved(self) -> int:
        """The seq reservation recorded outside Redis (see seq_recovery)."""
        return self._reservation.reserved

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the hot state (snapshot + deltas, or the log), then serve."""
        try:
            await self._load()
        except BaseException:
            self._become(RoomServerState.FAILED)
            raise
        self._become(RoomServerState.SERVING)
        self.task = asyncio.get_running_loop().create_task(self._serve(), name=f"room:{self.slug}")

    async def _load(self) -> None:
        floor = self._seq_floor

        async def load_reservation(slug: str) -> int:
            return floor

        position = await recover_start(
            self._log,
            self.slug,
            load_reservation=load_reservation if self._checkpoint else None,
            ask_all=self._ask_all,
            predecessor_last=self._predecessor_last,
            load_archived=self._archive.high if self._archive is not None else None,
        )
        self._predecessor_last = None
        if self._archive is not None and (position.lost or position.archived > position.redis_last):
            await self._refill(self._archive, position.redis_last)
        self.last_seq = position.last_seq
        self._reservation = Reservation(self.slug, self._checkpoint, reserved=position.reserved)
        self.state = RoomState(self.lease.node, self._config.state_window)
        await self._rebuild_state()
        self._uncertain = False

    async def _refill(self, archive: Archive, redis_last: int) -> None:
        """Redis lost the room's newest events: put the archive's recent tail back into the log
        before the first command, so the state window, edits of recent messages and readers
        find them there (older ones are read through the archive)."""
        high = await archive.high(self.slug)
        if high <= redis_last:
            return
        after = max(redis_last, high - REFILL_EVENTS)
        page = await archive.read(self.slug, after, high, REFILL_EVENTS)
        written = await self._log.restore(
            self.slug, node=self.lease.node, epoch=self.lease.epoch, restored=page.events
        )
        if archive.dedupe_user is not None:
            applied = []
            for event in page.events:
                user = archive.dedupe_user(event) if event.get("type") == "message" else None
                if user and event.get("client_id"):
                    seq, ts = int(event["seq"]), int(event.get("ts") or 0)
                    applied.append((user, str(event["client_id"]), seq, str(event["id"]), ts))
            await self._log.restore_dedupe(self.slug, applied, now_ms=int(time.time() * 1000))
        logger.warning(
            "room %s: Redis held seqs up to %d, the archive up to %d: %d archived events "
            "written back",
            self.slug, redis_last, high, written,
        )  # fmt: skip

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

    async def submit(self, command: Command, *, deadline: float | None = None) -> Ack:
        """Queue ``command`` and wait for its answer, at most until ``deadline`` (loop time).

        Raises CommandError (refused), or a Retryable error: NotOwner if this server does not
        serve any more, RoomUnavailable if it could not answer in time.
        """
        if not self.accepting:
            raise NotOwner(self.slug)
        loop = asyncio.get_running_loop()
        self.last_activity = self._clock()
        future: asyncio.Future[Ack] = loop.create_future()
        # The caller may stop waiting (its deadline): the answer must still be retrieved.
        future.add_done_callback(_retrieve)
        self._queue.put_nowait(_Pending(command, future, deadline))
        if deadline is None:
            return await asyncio.shield(future)
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(future)
        except TimeoutError:
            raise RoomUnavailable(self.slug, "no answer before the deadline") from None

    def fence(self) -> None:
        """The cluster presumed us dead, or the lease moved on: stop writing at once."""
        if self.status in (RoomServerState.SERVING, RoomServerState.STOPPING):
            self._become(RoomServerState.FENCED)
        self._fail_queued(NotOwner(self.slug))
        if self.task is not None and not self.task.done():
            self._queue.put_nowait(None)

    async def stop(self) -> None:
        """Stop taking commands, finish the one in hand, flush the state, refuse the rest
        (their senders retry at the next owner)."""
        if self.status is RoomServerState.SERVING:
            self._become(RoomServerState.STOPPING)
        self._fail_queued(NotOwner(self.slug))
        if self.task is not None and not self.task.done():
            self._queue.put_nowait(None)
            # asyncio.wait, not wait_for: our caller's own cancellation must go through.
            await asyncio.wait({self.task}, timeout=STOP_GRACE_S)
            if not self.task.done():
                self.task.cancel()
                await asyncio.wait({self.task}, timeout=STOP_GRACE_S)
        self._fail_queued(NotOwner(self.slug))
        if self.status is RoomServerState.STOPPING:
            if not self._uncertain:
                await self._flush_snapshot()
            self._become(RoomServerState.STOPPED)

    async def _flush_snapshot(self) -> None:
        try:
            await self.snapshot()
        except Exception:
            logger.warning("could not flush the state of %s; the deltas still hold it", self.slug)

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

    def _fail_queued(self, error: Exception) -> None:
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if pending is not None and not pending.future.done():
                pending.future.set_exception(error)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.status in (RoomServerState.SERVING, RoomServerState.STOPPING):
                pending = await self._queue.get()
                if pending is None:
                    return
                if pending.future.done():
                    continue
                if pending.deadline is not None and loop.time() >= pending.deadline:
                    # Its sender stopped waiting (and may have retried): running it now would
                    # only spend the sender's rate-limit tokens on an answer nobody reads.
                    pending.future.set_exception(RoomUnavailable(self.slug, "expired in queue"))
                    continue
                self._current = pending
                await self._run(pending)
                self._current = None
        except asyncio.CancelledError:
            if self._current is not None:
                self._uncertain = True  # cut off mid-command: no snapshot from this state
            self._answer_current(RoomUnavailable(self.slug, "room server stopped"))
            raise
        except BaseException as exc:
            # A bug, not a refusal: answer, fail, and let the supervisor restart us from
            # Redis (our in-memory state may be half-updated).
            self._answer_current(CommandError("unavailable", "internal error; try again"))
            if self.status in (RoomServerState.SERVING, RoomServerState.STOPPING):
                self._become(RoomServerState.FAILED)
            logger.error("room server %s failed", self.slug, exc_info=exc)
            raise
        finally:
            # Whatever ended the loop, nobody stays queued: the router retries these.
            self._fail_queued(NotOwner(self.slug))

    def _answer_current(self, error: Exception) -> None:
        current = self._current
        if current is not None and not current.future.done():
            current.future.set_exception(error)

    async def _run(self, pending: _Pending) -> None:
        try:
            if self._uncertain:
                await self._load()
            ack = await self._handle(pending.command)
        except CommandError as exc:
            pending.future.set_exception(exc)
        except Fenced as exc:
            logger.warning("%s; stopping the room server", exc)
            pending.future.set_exception(NotOwner(self.slug, exc.owner or None))
            self.fence()
        except TRANSIENT_REDIS_ERRORS as exc:
            # The append may or may not have landed: re-read before the next command; the
            # sender's retry (same client_id) is answered by the dedupe either way.
            self._uncertain = True
            self._stats.room_server_redis_errors += 1
            pending.future.set_exception(RoomUnavailable(self.slug, f"Redis: {exc}"))
        else:
            pending.future.set_result(ack)

    # -- commands --------------------------------------------------------------------------

    async def _handle(self, command: Command) -> Ack:
        validate(command, max_body=self._config.max_body)
        recent = self._recent.get((command.dedupe_key, command.client_id))
        if recent is not None:
            return _duplicate(recent)
        try:
            # Keyed by principal (a new display name is no new budget) and by address.
            limited = [(self._limiter, command.actor)]
            if command.address:
                limited.append((self._address_limiter, command.address))
            if not all(limiter.has_room(key) for limiter, key in limited):
                raise CommandError("rate_limited", "too many commands; slow down")
            for limiter, key in limited:
                limiter.allow(key)
            self._commands_seen += 1
            if self._commands_seen % 1000 == 0:  # one key per connection for ?name= clients
                self._limiter.forget_idle()
                self._address_limiter.forget_idle()
            event = await self._event_for(command)
        except CommandError:
            # A re-send of a command that was applied (by us before a restart, or by a
            # previous owner) is acked again, even if it would be refused now: its target
            # deleted since, the sender out of tokens (guarantee 3).
            prior = await self._applied_before(command)
            if prior is not None:
                return prior
            raise
        ts = self.state.clock.now()
        marker = new_marker(command.body, command.user, command.id, command.actor)
        provisional = {**event, "seq": marker}
        if command.type == "send":
            provisional["id"] = "m" + marker
        delta = self.state.delta_for(provisional, ts)
        try:
            result = await append_reserved(
                self._log,
                self._reservation,
                self.slug,
                last_seq=self.last_seq,
                node=self.lease.node,
                epoch=self.lease.epoch,
                event=event,
                user=command.dedupe_key,
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
        moderated = bool(event.get("moderator")) and not result.duplicate
        ack = Ack(command.client_id, result.seq, result.id, result.duplicate, moderated)
        self._remember(command, ack)
        return ack

    def _remember(self, command: Command, ack: Ack) -> None:
        self._recent[(command.dedupe_key, command.client_id)] = ack
        if len(self._recent) > RECENT_ACKS:
            self._recent.popitem(last=False)

    async def _applied_before(self, command: Command) -> Ack | None:
        if not command.client_id_given:
            return None
        found = await self._log.find_applied(self.slug, command.dedupe_key, command.client_id)
        if found is None:
            return None
        ack = Ack(command.client_id, found.seq, found.id, duplicate=True)
        self._remember(command, ack)
        return ack

    async def _event_for(self, command: Command) -> events.Event:
        now_ms = int(time.time() * 1000)
        # ``author``: the principal, kept in the log so that ownership of an old message is
        # known after a hand-off. Public: a user id, a connection's random id, or a one-way
        # per-room token of a web guest's session id (the session id itself never leaves it).
        if command.type == "send":
            message: events.Event = {
                "type": "message",
                "room": self.slug,
                "user": command.user,
                "body": command.body,
                "ts": now_ms,
                "client_id": command.client_id if command.client_id_given else None,
                "author": command.actor,
            }
            if command.guest:
                message["guest"] = True
            return message
        target = await self._message(command.id)
        if target is None:
            raise CommandError("not_found", f"no message {command.id!r} in this room")
        # The author's principal, never the display name: two guests called "sam" are two
        # people, and whoever registers "sam" later gets no rights over either's messages.
        # A message logged before authors were recorded belongs to nobody (moderators only).
        own = target.get("author") is not None and target.get("author") == command.actor
        if not own and not command.can_moderate:
            raise CommandError("forbidden", "you can only change your own messages")
        if target["deleted"]:
            raise CommandError("not_found", f"message {command.id!r} was deleted")
        event: events.Event = {"type": command.type, "room": self.slug, "id": command.id}
        event["user"] = command.user
        if command.type == "edit":
            event["body"] = command.body
        event["ts"] = now_ms
        event["author"] = command.actor
        if command.guest:
            event["guest"] = True
        if not own:
            event["moderator"] = True  # shown as a moderator's change, not the author's
        return event

    async def _message(self, message_id: str) -> dict[str, Any] | None:
        found = self.state.message(message_id)
        if found is not None:
            return found
        # Older than the window: the log answers in O(1) calls (the original event, and
        # whether a delete of it was ever appended), not by reading everything since.
        original, deleted = await self._log.message(self.slug, message_id)
        if original is None and self._archive is not None and self._archive.message is not None:
            # Trimmed from the log: the archive knows it (and whether it was deleted since),
            # so old messages stay editable and deletable by their authors and moderators.
            original, deleted = await self._archive.message(self.slug, message_id)
        if original is None:
            return None
        return {
            "user": original["user"],
            "body": original["body"],
            "author": original.get("author"),
            "deleted": deleted,
        }


def _duplicate(ack: Ack) -> Ack:
    return Ack(ack.client_id, ack.seq, ack.id, duplicate=True)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
