"""A live node to fuzz: a real ``runnode`` process on the session Redis, one per test module,
and small synchronous clients (hypothesis drives plain functions, one example at a time)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.nodes import Cluster, Node

ROOM = "lobby"
# The fuzzer is not a flood: without this, most frames would only be answered `rate_limited`.
FUZZ_ENV = {
    "CHAT_RATE_LIMIT": "100000/1",
    "CHAT_RATE_LIMIT_PER_ADDRESS": "100000/1",
    "CHAT_LEASE_TTL_MS": "10000",  # a loaded CI box must not lose the lease: the epoch is checked
}
CONTRACT_CODES = {"bad_request", "too_large", "not_found", "forbidden", "rate_limited"}


@pytest.fixture(scope="module")
def fuzz_node(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One node with one room, on an emptied Redis; ended (by its pid) after the module."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    cluster = Cluster(redis_server, Path(tmp_path_factory.mktemp("fuzz")), **FUZZ_ENV)
    try:
        cluster.create_room(ROOM)
        yield cluster.add("fz")
    finally:
        cluster.close()


@dataclass
class Wire:
    """One socket, read synchronously: every frame it received, in order."""

    ws: ClientConnection
    frames: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(cls, node: Node, name: str, query: str = "") -> Wire:
        ws = connect(
            f"{node.ws}/ws/rooms/{ROOM}/?name={name}{query}",
            open_timeout=10,
            max_size=None,
            close_timeout=2,
            legacy=True,  # closed by ``close()``, not by a ``with`` block
        )
        wire = cls(ws)
        hello = wire.next_frame(10)
        assert hello["type"] == "hello", hello
        return wire

    def next_frame(self, timeout: float = 5.0) -> dict[str, Any]:
        frame = json.loads(self.ws.recv(timeout=timeout))
        self.frames.append(frame)
        return frame

    def until(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame of ``kind``; others (events of the room, presence) are recorded."""
        while True:
            frame = self.next_frame(timeout)
            if frame.get("type") == kind:
                return frame

    def answer(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next ``ack`` or ``error``: what a command gets (guarantee 9: never silence)."""
        while True:
            frame = self.next_frame(timeout)
            if frame.get("type") in ("ack", "error"):
                return frame

    def alive(self, timeout: float = 5.0) -> bool:
        try:
            return self.ws.ping().wait(timeout)
        except ConnectionClosed:
            return False

    def close(self) -> None:
        self.ws.close()


def raw_get(node: Node, path: str, timeout: float = 10.0) -> tuple[int, bytes, str]:
    """GET ``path`` exactly as given (already percent-encoded ASCII): status, body, type."""
    connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=timeout)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Content-Type", "")
    finally:
        connection.close()


def last_seq(node: Node) -> int:
    status, body, _ = raw_get(node, f"/api/rooms/{ROOM}/events?after=0&limit=1")
    assert status == 200, body
    return int(json.loads(body)["last_seq"])


def room_epoch(node: Node) -> str | None:
    """The room's lease epoch: it changes when the room server restarts (a crash)."""
    status, body, _ = raw_get(node, "/api/cluster/")
    assert status == 200, body
    rooms = {r["slug"]: r for r in json.loads(body)["rooms"]}
    found = rooms.get(ROOM)
    return None if found is None else str(found["epoch"])


def online(node: Node) -> list[str]:
    """Users present in the room, as a newcomer's ``presence_state`` shows them."""
    wire = Wire.open(node, "observer")
    try:
        state = wire.until("presence_state", 5)
    finally:
        wire.close()
    return [user for user in state["users"] if user != "observer"]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)  # polling an outside view (HTTP, a fresh socket): no event to await


def assert_clean_log(node: Node) -> None:
    """The node never logged a failure: no traceback, no crashed room server."""
    text = node.log_path.read_text(errors="replace") if node.log_path else ""
    bad = [
        line
        for line in text.splitlines()
        if ("Traceback" in line or " ERROR " in line)
        and "Service Unavailable: /readyz" not in line  # the start-up probe, before ready
    ]
    assert not bad, "the node logged failures:\n" + "\n".join(bad[:20]) + "\n" + text[-3000:]
