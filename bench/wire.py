"""A lean WebSocket client connection for the load generator (RFC 6455, text frames only).

The generator shares the machine's cores with the servers it measures, so every microsecond it
spends per received frame is taken from them. The ``websockets`` library's asyncio client costs
~20-25 µs of CPU per frame here (a Sans-I/O parser built from generators, a message assembler,
a future and a task step per ``recv``). This connection parses frames in ``data_received`` and
hands each text frame to a plain callback, with no task or future per frame: a few µs.

It speaks only what the generator needs: the client upgrade, unmasked server frames (text,
fragmented or not; ping answered with pong; close), and masked client text frames.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Callable
from urllib.parse import urlsplit

try:
    from websockets.speedups import apply_mask as _apply_mask  # C, ships with websockets
except ImportError:  # pragma: no cover - the pure-Python wheel

    def _apply_mask(data: bytes, mask: bytes) -> bytes:
        n = len(data)
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
MAX_HEADER = 64 * 1024


class HandshakeFailed(OSError):
    """The server did not switch protocols."""


class WireConnection(asyncio.Protocol):
    """One client socket. Text frames go to ``on_text`` (set it before data may arrive: frames
    that come earlier wait in ``early`` and are handed over by ``deliver_early``)."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._buffer = bytearray()
        self._upgraded = False
        self._fragments: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_text: Callable[[str], None] | None = None
        self.early: asyncio.Queue[str] = asyncio.Queue()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded and not self._read_upgrade():
            return
        self._read_frames()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    # -- sending

    def send_text(self, text: str) -> None:
        self._send(TEXT, text.encode())

    def close(self, code: int = 1000) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._send(CLOSE, struct.pack("!H", code))
        self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _send(self, opcode: int, payload: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        self._transport.write(header + mask + _apply_mask(payload, mask))

    # -- receiving

    def _read_upgrade(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEADER:
                self._fail(HandshakeFailed("response headers too long"))
            return False
        head = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[: end + 4]
        status = head.split("\r\n", 1)[0]
        if " 101 " not in f"{status} ":
            self._fail(HandshakeFailed(f"no upgrade: {status!r}"))
            return False
        self._upgraded = True
        if not self.opened.done():
            self.opened.set_result(None)
        return True

    def _read_frames(self) -> None:
        buffer = self._buffer
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            length = second & 0x7F
            offset = 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length = struct.unpack_from("!H", buffer, 2)[0]
                offset = 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length = struct.unpack_from("!Q", buffer, 2)[0]
                offset = 10
            if second & 0x80:
                self._fail(ConnectionError("a server frame must not be masked"))
                return
            if len(buffer) < offset + length:
                return
            payload = bytes(buffer[offset : offset + length])
            del buffer[: offset + length]
            self._on_frame(first & 0x80, first & 0x0F, payload)

    def _on_frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode in (TEXT, BINARY, CONTINUATION):
            if not fin:
                self._fragments.append(payload)
                return
            if self._fragments:
                payload = b"".join([*self._fragments, payload])
                self._fragments = []
            text = payload.decode()
            if self.on_text is not None:
                self.on_text(text)
            else:
                self.early.put_nowait(text)
        elif opcode == PING:
            self._send(PONG, payload)
        elif opcode == CLOSE:
            self.close(struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1000)

    def _fail(self, error: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(error)
        self.abort()

    # -- the handshake phase

    async def recv(self) -> str:
        """The next text frame, while ``on_text`` is not set (the join handshakes)."""
        getter = asyncio.ensure_future(self.early.get())
        done, _ = await asyncio.wait({getter, self.closed}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        raise ConnectionError("closed")

    def stream_to(self, on_text: Callable[[str], None]) -> None:
        """From now on every text frame goes to ``on_text``, those already here first."""
        while not self.early.empty():
            on_text(self.early.get_nowait())
        self.on_text = on_text


async def connect(url: str, *, origin: str | None, timeout: float) -> WireConnection:
    """Open a WebSocket to ``url`` (ws:// only) and wait for the upgrade."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise ValueError(f"only ws:// URLs: {url!r}")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin:
        lines.append(f"Origin: {origin}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, connection = await loop.create_connection(lambda: WireConnection(request), host, port)
        await connection.opened
    return connection
