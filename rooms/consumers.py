"""The room socket: translates frames to runtime calls and runtime answers to frames.

It owns no room state. Durable events reach it through the node's fan-out (``deliver``), go
through one outbox, and leave in seq order; a hole (a slow socket whose outbox overflowed, a
resume point) is filled from the room log, so a client never sees a gap or a duplicate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import parse_qs

from autobahn.exception import Disconnected
from channels.generic.websocket import AsyncWebsocketConsumer

from cluster.commands import Command
from cluster.errors import CommandError
from cluster.runtime import ClusterRuntime

from . import selectors
from .identity import IdentityRefused, identify
from .protocol import error_frame, parse_after, parse_client_frame
from .runtime import current_runtime

logger = logging.getLogger("rooms.consumers")

CLOSE_NOT_FOUND = 4404
CLOSE_FORBIDDEN = 4403
CLOSE_DRAINING = 1012
CLOSE_INTERNAL = 1011
OUTBOX_LIMIT = 2000  # frames queued for one socket before live events are dropped (and refilled)
TYPING_INTERVAL_S = 1.0


class RoomConsumer(AsyncWebsocketConsumer):
    user = ""
    slug = ""
    runtime: ClusterRuntime | None = None
    attached = False
    closing = False

    async def connect(self) -> None:
        # Accept first, then refuse with a close code: a browser sees codes only after accept.
        await self.accept()
        self.slug = self.scope["url_route"]["kwargs"]["slug"]
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent_seq = 0
        self.last_typing = 0.0
        self.sender: asyncio.Task[None] | None = None
        runtime = current_runtime()
        if runtime is None or runtime.state != "running":
            await self.close(code=CLOSE_DRAINING)
            return
        self.runtime = runtime
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        room = await selectors.room_aget(self.slug)
        if room is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        if room.archived:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        try:
            identity = await identify(self.scope.get("user"), query.get("name", [None])[0])
        except IdentityRefused as refused:
            await self.send_json(error_frame("forbidden", str(refused)))
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.user, self.is_staff = identity.name, identity.is_staff
        try:
            after = parse_after(query.get("after", [None])[0])
        except CommandError as exc:
            await self.send_json(error_frame(exc.code, exc.detail))
            after = None
        try:
            attachment = await runtime.attach(self.slug, self)
        except Exception:
            logger.exception("attach to %s failed", self.slug)
            await self.close(code=CLOSE_INTERNAL)
            return
        self.attached = True
        last_seq = attachment.last_seq
        hello = {"type": "hello", "room": self.slug, "node": runtime.node, "user": self.user}
        await self.send_json({**hello, "last_seq": last_seq})
        await self.send_json({"type": "presence_state", "users": attachment.users})
        self.sent_seq = last_seq if after is None else min(after, last_seq)
        if self.sent_seq < last_seq:
            await self._fill(until=last_seq)
        self.sender = asyncio.get_running_loop().create_task(self._send_loop())

    async def disconnect(self, code: int) -> None:
        if self.sender is not None:
            self.sender.cancel()
        if self.attached and self.runtime is not None:
            self.attached = False
            try:
                await self.runtime.detach(self.slug, self)
            except Exception:
                logger.warning("detach from %s failed; presence heals on node expiry", self.slug)

    # -- from the fan-out ------------------------------------------------------------------

    def deliver(self, frame: dict[str, Any]) -> None:
        if self.outbox.qsize() >= OUTBOX_LIMIT and frame.get("type") != "_close":
            return  # durable events dropped here come back from the log as a gap fill
        self.outbox.put_nowait(frame)

    async def _send_loop(self) -> None:
        while True:
            frame = await self.outbox.get()
            kind = frame.get("type")
            if kind == "_close":
                self.closing = True
                await self.close(code=int(frame["code"]))
                return
            if "seq" in frame:
                seq = int(frame["seq"])
                if seq <= self.sent_seq:
                    continue
                if seq > self.sent_seq + 1:
                    await self._fill(until=seq - 1)
                self.sent_seq = seq
            await self.send_json(frame)

    async def _fill(self, *, until: int) -> None:
        assert self.runtime is not None
        kept = await self.runtime.replay(self.slug, after=self.sent_seq, until=until)
        if kept.first_available > self.sent_seq + 1:
            await self.send_json({"type": "gap", "first_available": kept.first_available})
        for event in kept.events:
            if event["seq"] > self.sent_seq:
                await self.send_json(event)
                self.sent_seq = event["seq"]
        self.sent_seq = max(self.sent_seq, until)

    # -- from the client -------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.runtime is None or not self.attached:
            return
        client_id: str | None = None
        try:
            if text_data is None:
                raise CommandError("bad_request", "binary frames are not part of the protocol")
            frame = parse_client_frame(text_data)
            client_id = frame.client_id
            if frame.type == "typing":
                await self._typing()
                return
            command = Command(
                type=frame.type,  # type: ignore[arg-type]
                user=self.user,
                client_id=client_id or f"srv-{uuid.uuid4().hex}",
                body=frame.body,
                id=frame.id,
                is_staff=self.is_staff,
                client_id_given=client_id is not None,
            )
            ack = await self.runtime.submit(self.slug, command)
        except CommandError as exc:
            await self.send_json(error_frame(exc.code, exc.detail, client_id))
            return
        except Exception:
            logger.exception("command in %s failed", self.slug)
            await self.send_json(error_frame("unavailable", "try again", client_id))
            return
        await self.send_json({"type": "ack", "client_id": client_id, "seq": ack.seq, "id": ack.id})

    async def _typing(self) -> None:
        assert self.runtime is not None
        now = time.monotonic()
        if now - self.last_typing < TYPING_INTERVAL_S:
            return
        self.last_typing = now
        await self.runtime.typing(self.slug, self.user)

    async def send_json(self, frame: dict[str, Any]) -> None:
        if self.closing:
            return  # the client resumes elsewhere and re-sends what was not acked
        try:
            await self.send(text_data=json.dumps(frame, ensure_ascii=False))
        except Disconnected:
            # Closed under us (an ack that arrives after the close): not a crash, or the
            # consumer dies before ``disconnect`` and its listener and presence leak.
            self.closing = True
