"""Chat clients for tests: real WebSockets, a record of every frame, resume and re-send."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

Frame = dict[str, Any]


@dataclass
class ChatClient:
    """One socket: every frame it received, in order."""

    base: str  # ws://host:port
    room: str
    name: str
    frames: list[Frame] = field(default_factory=list)
    ws: ClientConnection | None = None
    close_code: int | None = None
    _reader: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self, *, after: int | None = None, timeout: float = 10.0) -> Frame:
        query = f"name={self.name}" + (f"&after={after}" if after is not None else "")
        self.ws = await asyncio.wait_for(
            websockets.connect(f"{self.base}/ws/rooms/{self.room}/?{query}"), timeout
        )
        hello = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self._record(hello)
        self._reader = asyncio.get_running_loop().create_task(self._read(self.ws))
        return hello

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self._record(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = ws.close_code
            self._changed.set()

    def _record(self, frame: Frame) -> None:
        self.frames.append(frame)
        self._changed.set()

    @property
    def durable(self) -> list[Frame]:
        return [f for f in self.frames if f.get("type") in ("message", "edit", "delete")]

    @property
    def acks(self) -> dict[str, Frame]:
        return {f["client_id"]: f for f in self.frames if f.get("type") == "ack"}

    @property
    def last_seq(self) -> int:
        return max([int(f["seq"]) for f in self.durable] or [0])

    @property
    def connected(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def send(self, body: str, client_id: str | None = None) -> str:
        client_id = client_id or uuid.uuid4().hex
        await self.send_frame({"type": "send", "body": body, "client_id": client_id})
        return client_id

    async def send_frame(self, frame: Frame) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(frame))

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async def loop() -> None:
            while not predicate():
                self._changed.clear()
                if predicate():
                    return
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)

    async def wait_frame(self, kind: str, timeout: float = 10.0, start: int = 0) -> Frame:
        def found() -> Frame | None:
            return next((f for f in self.frames[start:] if f.get("type") == kind), None)

        await self.wait_for(lambda: found() is not None, timeout)
        frame = found()
        assert frame is not None
        return frame

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)


@dataclass
class RoamingClient:
    """Behaves like the web page: when its socket closes it reconnects (to the next node in
    its list) with ``after=`` its last seq, and re-sends every unacked command with the same
    client_id. Its record spans every socket it had."""

    bases: list[str]
    room: str
    name: str
    sockets: list[ChatClient] = field(default_factory=list)
    sent: dict[str, str] = field(default_factory=dict)
    _which: int = 0

    @property
    def current(self) -> ChatClient | None:
        return self.sockets[-1] if self.sockets else None

    @property
    def durable(self) -> list[Frame]:
        return [f for s in self.sockets for f in s.durable]

    @property
    def acks(self) -> dict[str, Frame]:
        return {k: v for s in self.sockets for k, v in s.acks.items()}

    @property
    def errors(self) -> list[Frame]:
        return [f for s in self.sockets for f in s.frames if f.get("type") == "error"]

    @property
    def pending(self) -> dict[str, str]:
        acks = self.acks
        return {c: b for c, b in self.sent.items() if c not in acks}

    @property
    def last_seq(self) -> int:
        return max([int(f["seq"]) for f in self.durable] or [0])

    async def connect(self, timeout: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        after = self.last_seq if self.sockets else None
        while True:
            socket = ChatClient(self.bases[self._which % len(self.bases)], self.room, self.name)
            try:
                await socket.connect(after=after)
                break
            except (TimeoutError, OSError, websockets.WebSocketException):
                self._which += 1
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)
        self.sockets.append(socket)
        for client_id, body in self.pending.items():
            await socket.send(body, client_id)

    async def ensure_connected(self) -> None:
        current = self.current
        if current is None:
            await self.connect()
        elif not current.connected:
            self._which += 1
            await self.connect()

    async def send(self, body: str) -> str:
        client_id = uuid.uuid4().hex
        self.sent[client_id] = body
        await self.ensure_connected()
        assert self.current is not None
        try:
            await self.current.send(body, client_id)
        except websockets.ConnectionClosed:
            pass  # re-sent by the next connect()
        return client_id

    async def settle(self, timeout: float = 15.0) -> None:
        """Reconnect as needed until every command sent has been acked."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending:
            if loop.time() > deadline:
                raise AssertionError(f"{self.name}: {len(self.pending)} commands never acked")
            await self.ensure_connected()
            current = self.current
            assert current is not None

            def done(socket: ChatClient = current) -> bool:
                return not self.pending or not socket.connected

            try:
                await current.wait_for(done, 1.0)
            except TimeoutError:
                # An `unavailable` error (Redis down, room moving): retry, same client_id.
                with contextlib.suppress(websockets.ConnectionClosed):
                    for client_id, body in self.pending.items():
                        await current.send(body, client_id)

    async def close(self) -> None:
        if self.current is not None and self.current.connected:
            await self.current.close()
