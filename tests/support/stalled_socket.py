"""A WebSocket client that completes the handshake and then stops reading (a slow-reader attack).

It is a raw TCP socket with a small receive buffer, so the server's own buffers are what fill
up. ``read_all`` later reads what the server sent (unmasked server frames) up to its close frame.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets

CLOSE_OPCODE = 0x8
TEXT_OPCODE = 0x1


@dataclass
class StalledSocket:
    port: int
    path: str  # /ws/rooms/SLUG/?name=x&after=0
    rcvbuf: int = 4096
    sock: socket.socket | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None

    def connect(self, timeout: float = 10.0) -> StalledSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Before connect, so the window the server sees is small from the start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", self.port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        sock.sendall(request.encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):  # byte by byte: leave the frames unread
            chunk = sock.recv(1)
            if not chunk:
                raise ConnectionError(f"handshake cut: {head!r}")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"handshake refused: {head!r}")
        self.sock = sock
        return self

    _buffer: bytearray = field(default_factory=bytearray)

    def read_all(self, timeout: float = 30.0) -> None:
        """Read frames until the close frame or the end of the stream (or ``timeout``)."""
        self._read_until(lambda: False, timeout)

    def read_durable(self, count: int, timeout: float = 30.0) -> None:
        """Read until ``count`` durable events arrived (a reader that stops mid-stream)."""
        self._read_until(lambda: len(self.seqs) >= count, timeout)

    def read_slowly(self, seconds: float, chunk: int = 32 * 1024, pause: float = 0.1) -> bool:
        """Read ``chunk`` bytes every ``pause`` seconds for ``seconds`` (a slow link, not a
        stopped client); True if the server closed the socket meanwhile."""
        assert self.sock is not None
        self.sock.settimeout(1.0)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(chunk)
            except TimeoutError:
                continue
            except OSError:
                return True
            if not data:
                return True
            self._buffer += data
            if self._parse(self._buffer):
                return True
            time.sleep(pause)  # the slow link itself, not a synchronisation
        return False

    def _read_until(self, enough: Callable[[], bool], timeout: float) -> None:
        assert self.sock is not None
        deadline = time.monotonic() + timeout
        self.sock.settimeout(1.0)
        while time.monotonic() < deadline and not enough():
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                break  # reset: what was not read is gone
            if not chunk:
                break
            self._buffer += chunk
            if self._parse(self._buffer):
                return

    def _parse(self, buffer: bytearray) -> bool:
        """Consume whole frames from ``buffer``; True once the close frame was seen."""
        while len(buffer) >= 2:
            opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buffer) < 4:
                    return False
                (length,) = struct.unpack("!H", buffer[2:4])
                offset = 4
            elif length == 127:
                if len(buffer) < 10:
                    return False
                (length,) = struct.unpack("!Q", buffer[2:10])
                offset = 10
            if len(buffer) < offset + length:
                return False
            payload = bytes(buffer[offset : offset + length])
            del buffer[: offset + length]
            if opcode == TEXT_OPCODE:
                self.frames.append(json.loads(payload))
            elif opcode == CLOSE_OPCODE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                return True
        return False

    @property
    def seqs(self) -> list[int]:
        return [int(f["seq"]) for f in self.frames if "seq" in f]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def seed_room(ws_base: str, room: str, count: int, body: str) -> int:
    """Append ``count`` messages through the protocol, pipelined in batches of 100 (the node
    needs a rate limit that allows it). Returns the last seq."""
    url = f"{ws_base}/ws/rooms/{room}/?name=seeder"
    last = 0
    async with websockets.connect(url, max_size=None) as ws:
        prefix = os.urandom(4).hex()
        sent = 0
        while sent < count:
            batch = min(100, count - sent)
            for i in range(batch):
                frame = {"type": "send", "body": body, "client_id": f"seed-{prefix}-{sent + i}"}
                await ws.send(json.dumps(frame, ensure_ascii=False))
            acked = 0
            while acked < batch:
                answer = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if answer["type"] == "error":
                    raise RuntimeError(f"seeding refused: {answer}")
                if answer["type"] == "ack":
                    acked += 1
                    last = max(last, int(answer["seq"]))
            sent += batch
    return last
