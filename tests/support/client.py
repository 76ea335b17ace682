"""A chat client for tests: a real WebSocket, a record of every frame, resume and re-send."""

from __future__ import annotations

import asyncio
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
    base: str  # ws://host:port
    room: str
    name: str
    frames: list[Frame] = field(default_factory=list)
    durable: list[Frame] = field(default_factory=list)
    acks: dict[str, Frame] = field(default_factory=dict)
    last_seq: int = 0
    close_codes: list[int] = field(default_factory=list)
    ws: ClientConnection | None = None
    _reader: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self, *, resume: bool = True, timeout: float = 10.0) -> Frame:
        query = f"name={self.name}"
        if resume and self.durable:
            query += f"&after={self.last_seq}"
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
            if ws.close_code is not None:
                self.close_codes.append(ws.close_code)
            self._changed.set()

    def _record(self, frame: Frame) -> None:
        self.frames.append(frame)
        if frame.get("type") in ("message", "edit", "delete"):
            self.durable.append(frame)
            self.last_seq = max(self.last_seq, int(frame["seq"]))
        elif frame.get("type") == "ack":
            self.acks[frame["client_id"]] = frame
        self._changed.set()

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
            for frame in self.frames[start:]:
                if frame.get("type") == kind:
                    return frame
            return None

        await self.wait_for(lambda: found() is not None, timeout)
        frame = found()
        assert frame is not None
        return frame

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)

    def seqs(self) -> list[int]:
        return [int(f["seq"]) for f in self.durable]
