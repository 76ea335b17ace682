"""Frames framed once per event and written straight to every local socket (issue 10), against
real ``runnode`` processes: every socket of a room gets the same bytes in the same order, the
sender's acks come in order with them, and a socket closed mid-stream breaks no other."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.support.nodes import Cluster

pytestmark = [pytest.mark.cluster]

ROOM = "fan"
READERS = 12  # per node
MESSAGES = 60
# Frame lengths on both sides of the 7-bit and 16-bit length encodings, ASCII and UTF-8.
BODIES = ["short", "x" * 200, "é" * 3990]  # with the "N " prefix, within CHAT_MAX_BODY
DURABLE = ("message", "edit", "delete")


@dataclass
class RawSocket:
    """One socket's text frames exactly as they came off the wire, in order."""

    ws: ClientConnection
    texts: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def open(cls, base: str, name: str) -> RawSocket:
        ws = await asyncio.wait_for(
            websockets.connect(f"{base}/ws/rooms/{ROOM}/?name={name}", max_size=None), 10
        )
        socket = cls(ws)
        socket.reader = asyncio.get_running_loop().create_task(socket._read())
        return socket

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                assert isinstance(raw, str)  # a text frame
                self.texts.append(raw)
                self.changed.set()
        self.changed.set()

    def frames(self) -> list[dict[str, Any]]:
        return [json.loads(text) for text in self.texts]

    def durable_texts(self) -> list[str]:
        return [t for t, f in zip(self.texts, self.frames(), strict=True) if f["type"] in DURABLE]

    async def wait_for(self, predicate: Any, timeout: float = 20.0) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                if predicate():
                    return
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)

    async def close(self) -> None:
        await self.ws.close()
        if self.reader is not None:
            await asyncio.wait_for(self.reader, 5)


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(redis_url, tmp_path, CHAT_RATE_LIMIT="100000/1")
    try:
        yield c
    finally:
        c.close()


async def test_every_socket_gets_the_same_bytes_in_order_and_a_closed_one_breaks_none(
    cluster: Cluster,
) -> None:
    cluster.create_room(ROOM)
    # Node b frames the ordinary way (autobahn per socket): its sockets' bytes must equal a's.
    a = cluster.add("a")
    b = cluster.add("b", RUNNODE_PREPARED_FRAMES="off")
    sender = await RawSocket.open(a.ws, "sender")
    readers = [await RawSocket.open(a.ws, f"ra{i}") for i in range(READERS)]
    readers += [await RawSocket.open(b.ws, f"rb{i}") for i in range(READERS)]
    quitter, aborter = readers[1], readers[READERS + 1]  # one on each node leaves mid-stream
    staying = [r for r in readers if r not in (quitter, aborter)]

    client_ids = [uuid.uuid4().hex for _ in range(MESSAGES)]
    for i, client_id in enumerate(client_ids):
        body = f"{i} {BODIES[i % len(BODIES)]}"
        frame = {"type": "send", "body": body, "client_id": client_id}
        await sender.ws.send(json.dumps(frame, ensure_ascii=False))
        if i == MESSAGES // 3:
            await quitter.close()
            aborter.ws.transport.abort()  # gone without a close frame

    for socket in (sender, *staying):
        await socket.wait_for(lambda s=socket: len(s.durable_texts()) == MESSAGES)

    expected = sender.durable_texts()
    seqs = [json.loads(text)["seq"] for text in expected]
    assert seqs == sorted(seqs) and len(set(seqs)) == MESSAGES
    for socket in staying:
        assert socket.durable_texts() == expected  # the same bytes, in the same order
    # The sender's acks: one per message, in the order sent, each for the seq its message got
    # (the command loop runs one command at a time), interleaved with the events as written.
    frames = sender.frames()
    acks = [f for f in frames if f["type"] == "ack"]
    assert [f["client_id"] for f in acks] == client_ids
    assert [f["seq"] for f in acks] == seqs
    assert not [f for f in frames if f["type"] == "error"]
    # A socket that stayed still works both ways after its neighbours left.
    probe = uuid.uuid4().hex
    talker = staying[0]
    await talker.ws.send(json.dumps({"type": "send", "body": "still here", "client_id": probe}))
    await talker.wait_for(lambda: any(f.get("client_id") == probe for f in talker.frames()))
    for socket in (sender, *staying):
        await socket.wait_for(lambda s=socket: len(s.durable_texts()) == MESSAGES + 1)
        await socket.close()


def test_autobahn_debug_lines_are_built_plain() -> None:
    """Autobahn's per-read debug arguments no longer go through click.style (the patch keeps
    what they say: the function's name and the value)."""
    import autobahn.twisted.websocket as twisted_websocket

    from chatsite.daphne_compat import patch_daphne

    patch_daphne()
    assert twisted_websocket.hlval(42) == "42"
    assert twisted_websocket.hltype(test_autobahn_debug_lines_are_built_plain) == (
        "<test_autobahn_debug_lines_are_built_plain>"
    )
    assert "\x1b[" not in twisted_websocket.hltype(twisted_websocket.WebSocketServerProtocol)
