"""WebSocket clients of the three protocols, and the tally every received frame goes to.

One process holds every client; the hot path (a chat message arriving) is a frame parsed in
``data_received`` (bench/wire.py: no task or future per frame), a regex over its text, a set
lookup and an append, so that the generator stays cheaper than the servers. A
message body carries its step, its sender, its number and the send time (monotonic ns)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from . import wire

BODY_BYTES = 64
_BODY = re.compile(r"~(\d+)~(\d+)~(\d+)~(\d+)~")


def make_body(step: int, sender: int, number: int, sent_ns: int) -> str:
    core = f"~{step}~{sender}~{number}~{sent_ns}~"
    return core + "x" * (BODY_BYTES - len(core))


@dataclass
class Tally:
    """What one measurement (a rate step, a storm) received."""

    step: int
    unique: int = 0
    duplicates: int = 0
    stale: int = 0  # messages of an earlier step (late, or replayed on resume)
    latencies_ns: list[int] = field(default_factory=list)
    acks: int = 0
    ack_latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    presence_frames: int = 0
    closed: int = 0
    last_seq: dict[str, int] = field(default_factory=dict)


class Client:
    """One socket of one protocol, its reader task owned by this object."""

    def __init__(
        self, *, index: int, node: int, room: str, url: str, origin: str | None, protocol: str
    ) -> None:
        self.index = index
        self.node = node
        self.room = room
        self.url = url
        self.origin = origin
        self.protocol = protocol
        self.ws: wire.WireConnection | None = None
        self.tally: Tally | None = None
        self.seen: set[tuple[str, str]] = set()
        self.seen_step = -1
        self.hello: dict[str, Any] | None = None
        self.expect_replay = 0
        self.replayed = 0
        self.resumed = asyncio.Event()

    # -- connecting

    async def open(self, tally: Tally, timeout: float) -> float:
        """Connect and join; returns the seconds it took until the client can chat."""
        self.tally = tally
        started = time.monotonic()
        ws = await wire.connect(self.url, origin=self.origin, timeout=timeout)
        try:
            async with asyncio.timeout(timeout):
                if self.protocol == "project":
                    self.hello = json.loads(await ws.recv())
                elif self.protocol == "socketio":
                    await self._socketio_handshake(ws)
        except BaseException:
            ws.abort()
            raise
        ready = time.monotonic() - started
        if self.expect_replay <= 0:
            self.resumed.set()
        self.ws = ws
        ws.closed.add_done_callback(self._on_closed)
        ws.stream_to(self._on_frame)
        return ready

    async def _socketio_handshake(self, ws: wire.WireConnection) -> None:
        opening = await ws.recv()
        if not str(opening).startswith("0"):
            raise RuntimeError(f"engine.io open expected, got {opening!r}")
        ws.send_text("40")
        while not str(await ws.recv()).startswith("40"):
            pass
        ws.send_text(f'421["join","{self.room}"]')
        while True:
            frame = str(await ws.recv())
            if frame.startswith("431"):
                return
            if frame == "2":
                ws.send_text("3")

    # -- sending

    async def send_message(self, body: str, client_id: str) -> None:
        assert self.ws is not None
        if self.protocol == "project":
            text = f'{{"type":"send","body":"{body}","client_id":"{client_id}"}}'
        elif self.protocol == "channels":
            text = f'{{"message":"{body}"}}'
        else:
            text = f'42["chat","{self.room}","{body}"]'
        self.ws.send_text(text)

    # -- receiving

    def _on_frame(self, text: str) -> None:
        if self._on_text(text) and self.protocol == "socketio" and self.ws is not None:
            self.ws.send_text("3")  # an Engine.IO ping

    def _on_closed(self, _: object) -> None:
        if self.tally is not None:
            self.tally.closed += 1

    def _on_text(self, text: str) -> bool:
        """Count one frame; True when it was an Engine.IO ping (answered by the caller)."""
        match = _BODY.search(text)
        tally = self.tally
        assert tally is not None
        if match is None:
            return self._on_control(text, tally)
        step, sender, number, sent_ns = match.groups()
        if int(step) != tally.step:
            tally.stale += 1
            self.replayed += 1
            if self.replayed >= self.expect_replay > 0:
                self.resumed.set()
            return False
        if self.seen_step != tally.step:
            self.seen = set()
            self.seen_step = tally.step
        key = (sender, number)
        if key in self.seen:
            tally.duplicates += 1
            return False
        self.seen.add(key)
        tally.unique += 1
        tally.latencies_ns.append(time.monotonic_ns() - int(sent_ns))
        return False

    def _on_control(self, text: str, tally: Tally) -> bool:
        if self.protocol == "socketio":
            return text == "2"
        if self.protocol != "project":
            return False
        if '"presence_diff"' in text or '"presence_state"' in text:
            tally.presence_frames += 1
        elif '"ack"' in text:
            frame = json.loads(text)
            tally.acks += 1
            # client_id = STEP-SENDER-NUMBER-SENT_NS
            with contextlib.suppress(ValueError, IndexError, KeyError):
                sent_ns = int(str(frame["client_id"]).rsplit("-", 1)[1])
                tally.ack_latencies_ns.append(time.monotonic_ns() - sent_ns)
            seq = int(frame.get("seq") or 0)
            if seq > tally.last_seq.get(self.room, 0):
                tally.last_seq[self.room] = seq
        elif '"error"' in text:
            tally.errors += 1
            if len(tally.error_samples) < 5:
                tally.error_samples.append(text[:300])
        return False

    # -- closing

    async def close(self) -> None:
        ws = self.ws
        if ws is None:
            return
        ws.close()
        try:
            await asyncio.wait_for(asyncio.shield(ws.closed), 2)
        except TimeoutError:
            ws.abort()
