"""Clients that record everything: every command sent, every frame received (acks, durable
events, gaps, errors, presence), every close code and reconnect, each with a timestamp.

They are built on tests/support/client.py (``ChatClient`` for one socket, ``RoamingClient``'s
way of resuming) without changing those classes. The record is plain data (``Record``) so the
checker can be fed hand-made histories as easily as real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from tests.support.client import ChatClient

Frame = dict[str, Any]

# Record kinds.
CONNECT = "connect"  # a socket attempt; frame = {"after": N | None, "base": url}
CONNECT_FAILED = "connect_failed"  # frame = {"error": str}
RECV = "recv"  # a frame from the server
COMMAND = "command"  # a frame the client sent (send / edit / delete)
CLOSE = "close"  # the socket closed; code = its close code

RETRYABLE = frozenset({"unavailable"})  # any other error code is a final answer
DURABLE = ("message", "edit", "delete")


def now() -> float:
    return time.monotonic()


@dataclass(frozen=True)
class Record:
    t: float
    room: str
    client: str  # a label unique in the run
    socket: int  # the client's n-th socket attempt
    kind: str
    frame: Frame | None = None
    code: int | None = None

    def short(self) -> str:
        what = json.dumps(self.frame, ensure_ascii=False)[:200] if self.frame is not None else ""
        code = f" code={self.code}" if self.code is not None else ""
        return f"t={self.t:.3f} {self.client}#{self.socket} {self.kind}{code} {what}"


@dataclass
class Journal:
    """Every record of a run, in the order they happened."""

    records: list[Record] = field(default_factory=list)

    def add(self, record: Record) -> None:
        self.records.append(record)


class RecordedSocket(ChatClient):
    """A ChatClient whose every frame in and out goes to the journal."""

    def __init__(self, base: str, room: str, name: str, *, journal: Journal, label: str,
                 index: int) -> None:  # fmt: skip
        super().__init__(base, room, name)
        self.journal = journal
        self.label = label
        self.index = index
        self.node: str | None = None
        self.user: str | None = None

    def log(self, kind: str, frame: Frame | None = None, code: int | None = None) -> None:
        self.journal.add(Record(now(), self.room, self.label, self.index, kind, frame, code))

    def _record(self, frame: Frame) -> None:
        if frame.get("type") == "hello":
            self.node, self.user = frame.get("node"), frame.get("user")
        self.log(RECV, frame)
        super()._record(frame)

    async def _read(self, ws: ClientConnection) -> None:
        try:
            await super()._read(ws)
        finally:
            self.log(CLOSE, code=ws.close_code)

    async def send_frame(self, frame: Frame) -> None:
        if frame.get("type") in ("send", "edit", "delete"):
            self.log(COMMAND, dict(frame))
        await super().send_frame(frame)


@dataclass
class Command:
    client_id: str
    frame: Frame
    acked: Frame | None = None
    refused: Frame | None = None  # a final error
    retry_at: float | None = None  # when to re-send (after `unavailable`); None = not yet
    sent_on: int = -1  # the socket it was last sent on
    acked_on: int = -1  # the socket its first ack came on

    @property
    def done(self) -> bool:
        return self.acked is not None or self.refused is not None


class RecordedClient:
    """A roaming client like the web page (tests/support/client.py RoamingClient): when its
    socket closes it reconnects to the next node with ``after=`` its last seq and re-sends what
    was not answered, same client_id; an ``unavailable`` error is retried after a pause."""

    def __init__(self, bases: list[str] | Callable[[], list[str]], room: str, name: str, *,
                 journal: Journal, label: str | None = None,
                 rng: random.Random | None = None,
                 resume_from: int | None = None) -> None:  # fmt: skip
        self._bases = bases
        self.room = room
        self.name = name
        self.journal = journal
        self.label = label or f"{name}@{room}"
        self.rng = rng or random.Random(0)
        self.sockets: list[RecordedSocket] = []
        self.commands: dict[str, Command] = {}
        self.presence: set[str] = set()
        self._attempts = 0
        self._which = self.rng.randrange(1000)
        self._seen_frames: dict[int, int] = {}  # socket index -> frames already processed
        self.last_seq = 0
        self._resume_from = resume_from  # a first connect with ``after=`` (a late resumer)

    # -- sockets ------------------------------------------------------------------------------

    @property
    def bases(self) -> list[str]:
        return self._bases() if callable(self._bases) else self._bases

    @property
    def current(self) -> RecordedSocket | None:
        return self.sockets[-1] if self.sockets else None

    @property
    def connected(self) -> bool:
        return self.current is not None and self.current.connected

    async def connect(self, timeout: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            bases = self.bases
            base = bases[self._which % len(bases)]
            after = self.last_seq if self.sockets else self._resume_from
            socket = RecordedSocket(base, self.room, self.name, journal=self.journal,
                                    label=self.label, index=self._attempts)  # fmt: skip
            self._attempts += 1
            socket.log(CONNECT, {"after": after, "base": base})
            try:
                hello = await socket.connect(after=after, timeout=5.0)
                if hello.get("type") != "hello":
                    raise ConnectionError(f"refused: {hello}")
                break
            except (TimeoutError, OSError, ConnectionError, websockets.WebSocketException) as exc:
                socket.log(CONNECT_FAILED, {"error": repr(exc)[:200]})
                if socket.ws is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(socket.ws.close(), 2)
                self._which += 1
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1 + self.rng.random() * 0.2)
        self.sockets.append(socket)
        self.process()
        for command in self.commands.values():
            if not command.done:
                await self._transmit(command)

    async def ensure_connected(self, timeout: float = 20.0) -> None:
        if self.current is None:
            await self.connect(timeout)
        elif not self.current.connected:
            self.process()
            self._which += 1
            await self.connect(timeout)

    async def close(self) -> None:
        if self.current is not None and self.current.connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.current.close(), 5)
        self.process()

    # -- what the client has seen ---------------------------------------------------------

    def process(self) -> None:
        """Fold frames received since the last call into the client's state."""
        for socket in self.sockets:
            start = self._seen_frames.get(socket.index, 0)
            for frame in socket.frames[start:]:
                self._fold(frame, socket.index, first_socket=socket is self.sockets[0])
            self._seen_frames[socket.index] = len(socket.frames)

    def _fold(self, frame: Frame, socket: int, *, first_socket: bool) -> None:
        kind = frame.get("type")
        if kind in DURABLE:
            self.last_seq = max(self.last_seq, int(frame["seq"]))
        elif kind == "hello" and first_socket:
            # A first socket starts at the room's end: resume from there, not from 0.
            self.last_seq = max(self.last_seq, int(frame.get("last_seq") or 0))
        elif kind == "presence_state":
            self.presence = set(frame.get("users", []))
        elif kind == "presence_diff":
            self.presence |= set(frame.get("joins", []))
            self.presence -= set(frame.get("leaves", []))
        elif kind in ("ack", "error") and frame.get("client_id") in self.commands:
            command = self.commands[frame["client_id"]]
            if kind == "ack":
                if command.acked is None:
                    command.acked, command.acked_on = frame, socket
            elif frame.get("code") in RETRYABLE:
                command.retry_at = now() + 0.3 + self.rng.random() * 0.4
            elif command.acked is None:
                command.refused = frame

    @property
    def pending(self) -> list[Command]:
        self.process()
        return [c for c in self.commands.values() if not c.done]

    @property
    def acked(self) -> list[Command]:
        self.process()
        return [c for c in self.commands.values() if c.acked is not None]

    # -- commands ---------------------------------------------------------------------------

    async def _transmit(self, command: Command) -> None:
        socket = self.current
        if socket is None or not socket.connected:
            return  # sent by the next connect()
        command.retry_at = None
        command.sent_on = socket.index
        with contextlib.suppress(websockets.ConnectionClosed):
            await socket.send_frame(command.frame)

    async def command(self, frame: Frame) -> Command:
        client_id = uuid.uuid4().hex
        command = Command(client_id, {**frame, "client_id": client_id})
        self.commands[client_id] = command
        await self.ensure_connected()
        await self._transmit(command)
        return command

    async def send(self, body: str) -> Command:
        return await self.command({"type": "send", "body": body})

    async def edit(self, message_id: str, body: str) -> Command:
        return await self.command({"type": "edit", "id": message_id, "body": body})

    async def delete(self, message_id: str) -> Command:
        return await self.command({"type": "delete", "id": message_id})

    async def retry_due(self) -> None:
        """Re-send commands whose `unavailable` pause is over (same client_id)."""
        t = now()
        for command in self.pending:
            if command.retry_at is not None and command.retry_at <= t:
                await self._transmit(command)

    async def settle(self, timeout: float = 30.0) -> None:
        """Reconnect and retry until every command has its final answer (or time is up)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending and loop.time() < deadline:
            with contextlib.suppress(TimeoutError, OSError, websockets.WebSocketException):
                await self.ensure_connected(timeout=max(1.0, deadline - loop.time()))
            await self.retry_due()
            await self._wait_change(0.2)
        self.process()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Keep connected and wait for ``predicate`` (checked after folding new frames)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self.process()
            if predicate():
                return True
            if loop.time() >= deadline:
                return False
            with contextlib.suppress(TimeoutError, OSError, websockets.WebSocketException):
                await self.ensure_connected(timeout=max(1.0, deadline - loop.time()))
            await self._wait_change(0.2)

    async def _wait_change(self, timeout: float) -> None:
        socket = self.current
        if socket is None:
            await asyncio.sleep(timeout)
            return
        socket._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(socket._changed.wait(), timeout)


@dataclass
class Workload:
    """Clients doing what people do: send, now and then edit or delete their own message,
    with at most ``in_flight`` commands unanswered each. Bounded by ``stop()``."""

    clients: list[RecordedClient]
    rng: random.Random
    interval_s: float = 0.3
    in_flight: int = 2
    edit_share: float = 0.1
    delete_share: float = 0.03
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._drive(c)) for c in self.clients]

    async def stop(self) -> None:
        self._stopping.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)
        for task in self._tasks:
            task.cancel()

    async def _drive(self, client: RecordedClient) -> None:
        n = 0
        while not self._stopping.is_set():
            try:
                await client.ensure_connected(timeout=10)
                await client.retry_due()
                if len(client.pending) < self.in_flight:
                    n += 1
                    await self._one(client, n)
            except (TimeoutError, OSError, websockets.WebSocketException) as exc:
                self.errors.append(f"{client.label}: {exc!r}")
            pause = self.interval_s * (0.5 + self.rng.random())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)

    async def _one(self, client: RecordedClient, n: int) -> None:
        # A ``?name=`` client acts only on what it sent over its present connection (a guest
        # without a session: rooms/identity.py); older messages would be refused `forbidden`.
        here = client.current.index if client.current else -1
        mine = [
            c.acked["id"]
            for c in client.acked
            if c.frame["type"] == "send" and c.acked and c.acked_on == here
        ]
        roll = self.rng.random()
        if mine and roll < self.delete_share:
            await client.delete(self.rng.choice(mine))
        elif mine and roll < self.delete_share + self.edit_share:
            await client.edit(self.rng.choice(mine), f"{client.name} edit {n}")
        else:
            await client.send(f"{client.name} #{n}")
