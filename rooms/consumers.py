"""The room socket: translates frames to runtime calls and runtime answers to frames.

It owns no room state. Durable events reach it through the node's fan-out (``deliver``), wait in
one bounded outbox, and leave in seq order through one writer, the send loop. Whatever the
outbox cannot hold is not lost: the socket remembers the highest seq it has heard of and the
send loop reads what it skipped from the room log, page by page, never faster than the client
reads (guarantee 10). A seq the log no longer has becomes a ``gap`` frame, never a silent skip.

Lifecycle: ``connect`` admits the socket (``_admit`` raises ``Refuse`` for every refusal,
caught in one place) and starts the send loop; every way out (refusal, error, client gone, a
close asked by the fan-out with ``request_close``, cancellation by the server) releases what
admission took: the fan-out attachment, the send loop and the socket's slot in the node's caps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from typing import Any, Protocol
from urllib.parse import parse_qs

from channels.db import aclose_old_connections
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from chatsite import logs
from chatsite.daphne_compat import TRANSPORT_EXTENSION
from chatsite.servers import DISCONNECTED
from cluster.commands import Command
from cluster.errors import CommandError
from cluster.runtime import ClusterRuntime

from . import selectors, services
from .identity import (
    Identity,
    IdentityRefused,
    Recheck,
    claim_guest_name,
    client_address,
    identify,
    room_members,
)
from .outbox import Frame, Outbox, encode
from .protocol import (
    FrameRefused,
    error_frame,
    parse_after,
    parse_client_frame,
    refuse_oversized,
)
from .runtime import current_runtime
from .socket_budget import SendBudget, SocketStalled
from .socket_caps import Slot, caps_of

logger = logging.getLogger("rooms.consumers")

CLOSE_NOT_FOUND = 4404
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_MANY = 4429
CLOSE_DRAINING = 1012
CLOSE_INTERNAL = 1011
CLOSE_TOO_SLOW = 1013
CLOSE_ABNORMAL = 1006  # ended with no close frame
OUTBOX_FRAMES = 2000  # frames queued for one socket (its bytes are bounded by the budget too)
PAGE_EVENTS = 200  # a replay page at most; fewer when events are large (a quarter budget)
MIN_PAGE_EVENTS = 16
READ_ATTEMPTS = 5  # a log read that fails this often in a row closes the socket with 1011
READ_BACKOFF_S = 0.1  # doubled after each failure: 0.1 + 0.2 + 0.4 + 0.8 = 1.5 s in all
TYPING_INTERVAL_S = 1.0
# Frames received but not yet run, per socket: bounds what a client can pile up while its room
# is unavailable (each at most a frame's 16,000 characters).
COMMANDS_WAITING = 32


_OLD_CONNECTIONS_EVERY_S = 1.0
_old_connections_closed_at = -_OLD_CONNECTIONS_EVERY_S


async def _close_old_connections_now_and_then() -> None:
    global _old_connections_closed_at
    now = time.monotonic()
    if now - _old_connections_closed_at >= _OLD_CONNECTIONS_EVERY_S:
        _old_connections_closed_at = now
        await aclose_old_connections()


class SocketProbe(Protocol):
    """What a server tells of one socket (chatsite.daphne_compat, chatsite.servers)."""

    def write_text(self, text: str, *, only_if_idle: bool = False) -> bool: ...

    def buffered(self) -> int: ...


class Refuse(Exception):
    """The socket may not stay: close it with ``code`` (after ``frame``, if any)."""

    def __init__(self, code: int, reason: str = "", frame: Frame | None = None) -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.frame = frame


class RoomConsumer(AsyncWebsocketConsumer):
    # No channel layer: room events reach sockets through the node's fan-out, never the
    # project's layer (chatsite/channel_layers.py says why); no alias of that name exists.
    channel_layer_alias = "none: rooms use the cluster fan-out"
    user = ""
    slug = ""
    identity: Identity | None = None
    recheck: Recheck | None = None
    address = ""
    runtime: ClusterRuntime | None = None
    attached = False
    closing = False  # a close frame went (or the socket is gone): nothing more is written
    close_code: int | None = None  # a close was asked for; the send loop carries it out
    phase = "new"  # new -> admitting -> open -> closed
    sender: asyncio.Task[None] | None = None  # the writer, while it has work
    commander: asyncio.Task[None] | None = None  # runs the queued commands, one at a time
    slot: Slot | None = None
    probe: SocketProbe | None = None  # the server's view of the socket's transport
    # No writer task runs: nothing queued, nothing to read from the log. An idle socket costs
    # no task (most sockets are idle most of the time); ``_kick`` starts one when needed.
    idle = False
    sent_close_code: int | None = None  # the close code this node sent
    peer_close_code: int | None = None  # the code the socket ended with, seen by disconnect
    commands: asyncio.Queue[tuple[float, str | FrameRefused | None]] | None = None

    async def connect(self) -> None:
        # Accept first, then refuse with a close code: a browser sees codes only after accept.
        await self.accept()
        self.phase = "admitting"
        try:
            await self._admit()
        except Refuse as refused:
            await self._release()
            if refused.frame is not None:
                await self._write(refused.frame)
            await self._close_with(refused.code)
            return
        except Exception:
            logger.exception("admitting a socket to %s failed", self.slug)
            await self._release()
            await self._close_with(CLOSE_INTERNAL)
            return
        if self.close_code is not None:  # asked while we were admitting (a drain)
            await self._close_with(self.close_code)
            return
        self.phase = "open"
        if self.runtime is not None:
            self.runtime.stats.sockets_opened += 1
        self._kick()  # the replay, and anything queued while admitting

    async def _admit(self) -> None:
        self.slug = self.scope["url_route"]["kwargs"]["slug"]
        logs.bind(room=self.slug)  # every line logged for this socket says which room
        self.outbox = Outbox(max_frames=OUTBOX_FRAMES, max_bytes=0)
        self.sent_seq = 0  # the client has every durable event up to here (or a gap for it)
        self.known_seq = 0  # the highest seq this socket has heard of
        self.behind = False  # durable events were skipped: the send loop reads them from the log
        # A presence_diff was dropped: send a fresh presence_state, from the node's view of the
        # room (a socket keeps no presence of its own: 500 members × 500 sockets adds up).
        self.presence_stale = False
        self.last_typing = 0.0
        self.page_events = PAGE_EVENTS
        budget = SendBudget.for_scope(self.scope, settings.CHAT_SOCKET_BUFFER_BYTES)
        probe = (self.scope.get("extensions") or {}).get(TRANSPORT_EXTENSION)
        self.probe = probe if hasattr(probe, "write_text") else None  # daphne's or uvicorn's
        self.budget = budget
        self.outbox.max_bytes = budget.quarter
        runtime = current_runtime()
        if runtime is None or not runtime.accepting_sockets:
            raise Refuse(CLOSE_DRAINING, "node not running")
        self.runtime = runtime
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        room = await selectors.room_aget(self.slug)
        if room is None:
            raise Refuse(CLOSE_NOT_FOUND, "no such room")
        if room.archived:
            raise Refuse(CLOSE_FORBIDDEN, "room archived")
        try:
            identity = await identify(self.scope, self.slug, query.get("name", [None])[0])
            if identity.is_guest:
                online = await room_members(runtime, self.slug)
                await claim_guest_name(runtime.redis, self.slug, identity, online)
        except IdentityRefused as refused:
            frame = error_frame("forbidden", str(refused))
            raise Refuse(CLOSE_FORBIDDEN, str(refused), frame) from None
        self.identity, self.user = identity, identity.name
        self.recheck = Recheck(identity)
        self.address = client_address(self.scope)
        self.slot = caps_of(runtime).acquire(
            identity.dedupe_as,  # the stable identity: a ?name= client's name, not its socket
            self.address,
            max_per_principal=settings.CHAT_MAX_SOCKETS_PER_USER,
            max_per_address=settings.CHAT_MAX_SOCKETS_PER_ADDRESS,
        )
        if self.slot is None:
            raise Refuse(CLOSE_TOO_MANY, "too many sockets for this user or address")
        try:
            after = parse_after(query.get("after", [None])[0])
        except CommandError as exc:
            await self._write(error_frame(exc.code, exc.detail))
            after = None
        attachment = await runtime.attach(self.slug, self)
        self.attached = True
        # From here on a failure still detaches: connect's handlers call _release.
        last_seq = attachment.last_seq
        # Diffs delivered from here on wait in the outbox: they go after the presence_state.
        await self._greet(last_seq, attachment.users)
        if after is None:
            self.sent_seq = last_seq
        else:
            # A client ahead of this node (it came from a node further on) has everything up
            # to ``after``: events up to there are skipped, never sent twice.
            self.sent_seq = after
        self.known_seq = max(self.known_seq, last_seq, self.sent_seq)
        self.behind = self.known_seq > self.sent_seq  # the replay: the send loop pages it in

    async def _greet(self, last_seq: int, users: list[str]) -> None:
        assert self.runtime is not None
        hello = {"type": "hello", "room": self.slug, "node": self.runtime.node, "user": self.user}
        if self.identity is not None:
            # Additive fields: the author token that marks this socket's own messages, and
            # whether it is a guest; ``moderator`` if it may change anyone's messages.
            hello["author"] = self.identity.principal
            hello["guest"] = self.identity.is_guest
            hello["moderator"] = self.identity.can_moderate
        # Straight into the transport when it can (one write each, no ASGI message): the two
        # frames every socket of a connect storm gets first.
        await self._send_text(*encode({**hello, "last_seq": last_seq}))
        await self._send_text(*encode({"type": "presence_state", "users": users}))

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch, with its ``close_old_connections`` (a hop to the database thread
        and back) done at most once a second per process instead of before every frame: it
        cost a thread round trip per received frame, 5 % of a node's CPU under load. Its job
        (dropping database connections that are too old or broken) needs no more than that."""
        if message.get("type") == "websocket.receive":
            await _close_old_connections_now_and_then()
            await self.websocket_receive(message)
        else:
            await super().dispatch(message)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Also when the server cancels us (a consumer still busy with a command when its
            # client left): otherwise the slot, the attachment and the send loop would stay.
            await self._shutdown()

    async def disconnect(self, code: int) -> None:
        if self.peer_close_code is None:
            self.peer_close_code = code
        await self._shutdown()

    async def _shutdown(self) -> None:
        self.closing = True
        if self.phase == "open" and self.runtime is not None:
            code = self.sent_close_code or self.peer_close_code or CLOSE_ABNORMAL
            self.runtime.stats.count_close(code)
        self.phase = "closed"
        for task in (self.sender, self.commander):
            if task is not None and task is not asyncio.current_task() and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._release()

    async def _release(self) -> None:
        """Give back what admission took; safe to call more than once."""
        if self.slot is not None:
            self.slot.caps.release(self.slot)
            self.slot = None
        if self.attached and self.runtime is not None:
            self.attached = False
            try:
                await self.runtime.detach(self.slug, self)
            except Exception:
                logger.warning("detach from %s failed; presence heals on node expiry", self.slug)

    # -- from the fan-out (must not block) -------------------------------------------------

    def deliver(self, frame: Frame) -> None:
        if self.closing or self.close_code is not None:
            return  # the client resumes with after= and gets it then
        kind = frame.get("type")
        if kind == "_close":  # the old in-band close, until every caller uses request_close
            self.request_close(int(frame["code"]))
            return
        if "seq" in frame:
            seq = int(frame["seq"])
            if seq <= self.known_seq:
                return  # already sent, or already to be read from the log
            if (
                seq == self.sent_seq + 1
                and self.idle
                and self.probe is not None
                and self.probe.write_text(encode(frame)[0], only_if_idle=True)
            ):  # _write_now, inlined: this is the fan-out's per-socket step
                self.sent_seq = self.known_seq = seq
                return
            if self.behind or not self.outbox.offer(frame):
                self.behind = True  # the send loop reads it from the log, even if nothing follows
            self.known_seq = seq
        elif kind in ("presence_diff", "presence_state"):
            if kind == "presence_diff" and self.user in frame["joins"]:
                # A socket's own user is in its presence_state and stays while it is here: a
                # join of it is news only to the others (a diff coalesced with its arrival).
                joins = [u for u in frame["joins"] if u != self.user]
                if not joins and not frame["leaves"]:
                    return
                frame = {**frame, "joins": joins}
            if not self.presence_stale and self._write_now(frame):
                return
            if self.presence_stale or not self.outbox.offer(frame):
                self.presence_stale = True  # replaced by a fresh presence_state
        elif self._write_now(frame):
            return
        elif not self.outbox.offer(frame):
            return  # typing: ephemeral, dropped when the socket is behind
        self._kick()

    def _kick(self) -> None:
        """Something waits for the socket: from now until the writer has sent it, nothing may
        overtake it (``idle`` is off), and the writer runs (it ends when it runs dry)."""
        self.idle = False
        if self.phase == "open" and (self.sender is None or self.sender.done()):
            self.sender = asyncio.get_running_loop().create_task(self._send_loop())

    def _write_now(self, frame: Frame) -> bool:
        """Write ``frame`` from the fan-out's own call when nothing waits for this socket: the
        send loop is parked (empty outbox, nothing to read from the log) and the transport
        holds nothing. The common case, and the cheapest: no task wakes per socket per event.
        False when the frame must take the send loop's way (it then keeps the order)."""
        if not self.idle or self.probe is None:
            return False
        return self.probe.write_text(encode(frame)[0], only_if_idle=True)

    def request_close(self, code: int) -> None:
        """Close the socket with ``code`` soon (the fan-out's drain asks for 1012)."""
        if self.closing or self.close_code is not None:
            return
        self.close_code = code
        self._kick()  # the writer sends what fits, then the close ("admitting": connect does)

    # -- the one writer ----------------------------------------------------------------------

    async def _send_loop(self) -> None:
        try:
            while not self.closing:
                if self.close_code is not None:
                    await self._flush_then_close(self.close_code)
                    return
                item = self.outbox.pop()
                if item is not None:
                    await self._send_queued(*item)
                elif self.presence_stale:
                    await self._send_presence_state()
                elif self.known_seq > self.sent_seq:
                    await self._fill(until=self.known_seq)
                else:  # ran dry: end, and let the fan-out write directly until _kick
                    self.behind = False
                    self.idle = True
                    self.sender = None
                    return
        except asyncio.CancelledError:
            raise
        except SocketStalled as stalled:
            logger.info(
                "socket of %s in %s stalled with %d bytes unread; closing with 1013",
                self.user, self.slug, stalled.buffered,
            )  # fmt: skip
            self.outbox.clear()
            await self._close_with(CLOSE_TOO_SLOW)
        except Exception:
            logger.exception("sending to a socket in %s failed; closing with 1011", self.slug)
            self.outbox.clear()
            await self._close_with(CLOSE_INTERNAL)

    def _stopping(self) -> bool:
        return self.closing or self.close_code is not None

    async def _send_queued(self, frame: Frame, text: str, size: int) -> None:
        if "seq" in frame:
            seq = int(frame["seq"])
            if seq <= self.sent_seq:
                return
            if seq > self.sent_seq + 1:
                await self._fill(until=seq - 1)
                if seq <= self.sent_seq or self._stopping():
                    return
            if await self._send_text(text, size):
                self.sent_seq = seq
            return
        await self._send_text(text, size)

    async def _send_text(self, text: str, size: int) -> bool:
        """Write one encoded frame once the budget has room; False if the socket is closing.

        Under daphne and uvicorn the frame's bytes, framed once per event for all sockets, go
        straight into the socket's transport (the probe's ``write_text``); the budget reads that
        same transport's buffer. Order with the acks and errors written by ``self.send`` holds:
        both write synchronously, before the writer yields."""
        if not await self.budget.wait_for_room(size, give_up=self._stopping):
            return False
        if self.closing:
            return False
        if self.probe is None or not self.probe.write_text(text):
            await self._send_raw(text)
        return not self.closing

    async def _send_presence_state(self) -> None:
        # Taken in the same step as the flag is cleared: every diff dropped before is in it,
        # and the node's diffs after it are offered again (see ``Presence.users``).
        self.presence_stale = False
        users = self.runtime.present(self.slug) if self.runtime is not None else None
        frame = {"type": "presence_state", "users": users or []}
        await self._send_text(*encode(frame))

    async def _fill(self, *, until: int) -> None:
        """Send the kept events in ``(sent_seq, until]`` from the log, a page at a time and no
        faster than the client reads; a seq with no event gives the client a ``gap``."""
        while self.sent_seq < until and not self._stopping():
            if self.presence_stale:
                await self._send_presence_state()
            limit = self.page_events
            page = await self._read_page(after=self.sent_seq, limit=limit)
            pending = deque(page.events)
            count = len(pending)
            del page  # sent events are freed as they go: a page costs at most its unsent rest
            page_bytes = 0
            while pending:
                event = pending.popleft()
                seq = int(event["seq"])
                if seq <= self.sent_seq:
                    continue
                if seq > self.sent_seq + 1:  # trimmed, or lost by Redis: say so
                    if not await self._send_text(*encode({"type": "gap", "first_available": seq})):
                        return
                text, size = encode(event)
                page_bytes += size
                if not await self._send_text(text, size):
                    return
                self.sent_seq = seq
            if count < limit:
                # The end of the log. Seqs up to ``until`` were assigned, so events missing
                # below it are gone (Redis lost them): the next seq that can exist is until + 1.
                if self.sent_seq < until:
                    gap = {"type": "gap", "first_available": until + 1}
                    if not await self._send_text(*encode(gap)):
                        return
                    self.sent_seq = until
                break
            average = max(1, page_bytes // count)
            self.page_events = max(
                MIN_PAGE_EVENTS, min(PAGE_EVENTS, self.budget.quarter // average)
            )
        self.known_seq = max(self.known_seq, self.sent_seq)

    async def _read_page(self, *, after: int, limit: int) -> Any:
        """One page of the log; a Redis error is retried with backoff, then raised."""
        assert self.runtime is not None
        delay = READ_BACKOFF_S
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return await self.runtime.events(self.slug, after=after, limit=limit)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if attempt == READ_ATTEMPTS or self._stopping():
                    raise
                logger.warning(
                    "reading %s after %d failed (%s); retry %d", self.slug, after, exc, attempt
                )
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def _flush_then_close(self, code: int) -> None:
        """Frames already queued go first if they fit without waiting; then the close."""
        while (item := self.outbox.pop()) is not None:
            frame, text, size = item
            if "seq" in frame and int(frame["seq"]) != self.sent_seq + 1:
                break  # a hole before it: the client reads it on resume instead
            if not self.budget.fits(size):
                break
            await self._send_raw(text)
            if "seq" in frame:
                self.sent_seq = int(frame["seq"])
        self.outbox.clear()
        await self._close_with(code)

    async def _close_with(self, code: int) -> None:
        if self.closing:
            return
        self.closing = True
        self.sent_close_code = code
        if code == CLOSE_TOO_SLOW and self.runtime is not None:
            self.runtime.stats.slow_consumers_closed += 1
        with contextlib.suppress(*DISCONNECTED):
            await self.close(code=code)

    # -- from the client -------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Stamp the frame and queue it for the command loop, without waiting for it.

        Channels hands a consumer one frame at a time: a command that waited for its room
        (an owner moving, Redis gone) would hold every later frame of the socket unread,
        and their clients would wait for more than one send timeout. Queued, each command
        is answered within CHAT_SEND_TIMEOUT_MS of arriving here, in the order sent.
        """
        if self.runtime is None or not self.attached or self._stopping():
            return
        loop = asyncio.get_running_loop()
        # Stamped on arrival. A full queue holds this frame (and, through daphne, the socket's
        # reading) back: a flood is read no faster than it is served, and costs no memory.
        received_at = loop.time()
        oversized = refuse_oversized(text_data) if text_data is not None else None
        # An oversized frame waits as its refusal, not as its text: the queue stays small.
        if self.commands is None:  # made on the first frame: most sockets never send one
            self.commands = asyncio.Queue(COMMANDS_WAITING)
        await self.commands.put((received_at, oversized if oversized is not None else text_data))
        if self.commander is None:
            self.commander = loop.create_task(self._command_loop())

    async def _command_loop(self) -> None:
        while True:
            assert self.commands is not None
            received_at, text_data = await self.commands.get()
            if self._stopping():
                return
            await self._command(received_at, text_data)

    async def _command(self, received_at: float, text_data: str | FrameRefused | None) -> None:
        assert self.runtime is not None
        client_id: str | None = None
        kind = "invalid"  # until the frame parses
        submitted = False  # past here the runtime counts the command's outcome
        try:
            if text_data is None:
                raise CommandError("bad_request", "binary frames are not part of the protocol")
            if isinstance(text_data, FrameRefused):
                raise text_data
            frame = parse_client_frame(text_data)
            client_id = frame.client_id
            kind = frame.type
            identity = await self._current_identity()
            if identity is None:
                self.runtime.stats.count_command(kind, "forbidden")
                await self._reply(error_frame("forbidden", "your session ended", client_id))
                self.request_close(CLOSE_FORBIDDEN)
                return
            if frame.type == "typing":
                self.runtime.stats.count_command(kind, "ok")
                await self._typing()
                return
            command = Command(
                type=frame.type,  # type: ignore[arg-type]
                user=self.user,
                client_id=client_id or f"srv-{uuid.uuid4().hex}",
                body=frame.body,
                id=frame.id,
                client_id_given=client_id is not None,
                principal=identity.principal,
                dedupe_as=identity.dedupe_as,
                can_moderate=identity.can_moderate,
                guest=identity.is_guest,
                address=self.address,
            )
            submitted = True
            ack = await self.runtime.submit(self.slug, command, received_at=received_at)
            if ack.moderated:
                await self._log_moderation(identity, command)
        except CommandError as exc:
            if isinstance(exc, FrameRefused) and client_id is None:
                client_id = exc.client_id  # a refused frame's own client_id, when it had one
            if not submitted:
                self.runtime.stats.count_command(kind, exc.code)
            await self._reply(error_frame(exc.code, exc.detail, client_id))
            return
        except Exception:
            if not submitted:
                self.runtime.stats.count_command(kind, "error")
            logger.exception("command in %s failed", self.slug)
            await self._reply(error_frame("unavailable", "try again", client_id))
            return
        await self._reply({"type": "ack", "client_id": client_id, "seq": ack.seq, "id": ack.id})
        # Arrival on the socket (before any wait in its queue) -> the ack written.
        self.runtime.stats.ack_latency.observe(asyncio.get_running_loop().time() - received_at)

    async def _log_moderation(self, identity: Identity, command: Command) -> None:
        try:
            await services.moderation_alog(
                user_id=identity.user_id,
                name=identity.name,
                action=command.type,
                slug=self.slug,
                target=command.id,
            )
        except Exception:  # the change is durable: its ack must still go
            logger.exception("could not log %s's %s of %s", identity.name, command.type, command.id)

    async def _current_identity(self) -> Identity | None:
        """The socket's identity now: a user's session and account are looked up again (at
        most once a second); None once they are gone (logout, deactivation)."""
        if self.recheck is None:
            return None
        return await self.recheck.current()

    async def _reply(self, frame: Frame) -> None:
        """An answer to the client's own command: written now, unless the socket is already
        over its whole budget (then the client is not reading: 1013, and it re-sends on
        resume with the same client_id)."""
        text, size = encode(frame)
        if self.budget.over(size):
            self.request_close(CLOSE_TOO_SLOW)
            return
        await self._send_raw(text)

    async def _typing(self) -> None:
        assert self.runtime is not None
        now = time.monotonic()
        if now - self.last_typing < TYPING_INTERVAL_S:
            return
        self.last_typing = now
        await self.runtime.typing(self.slug, self.user)

    async def _write(self, frame: Frame) -> None:
        await self._send_raw(encode(frame)[0])

    async def _send_raw(self, text: str) -> None:
        if self.closing:
            return  # the client resumes elsewhere and re-sends what was not acked
        if self.probe is not None and self.probe.write_text(text):
            return  # the same bytes, in the same order, without the trip through Channels
        try:
            await self.send(text_data=text)
        except DISCONNECTED:
            # Closed under us (an ack that arrives after the close): not a crash, or the
            # consumer dies before ``disconnect`` and its listener and presence leak.
            self.closing = True
