"""Presence frames as a socket sees them when joins come together (one node, the real ASGI
app and a real Redis): a newcomer's presence_state holds everyone there, itself included;
the diffs after it never tell it of its own join; its view converges to the room."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from chatsite.asgi import application
from cluster.presence import WINDOW_S
from rooms import services

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


class Socket:
    def __init__(self, name: str) -> None:
        self.name = name
        self.comm = WebsocketCommunicator(application, f"/ws/rooms/lobby/?name={name}")
        self.frames: list[dict[str, Any]] = []

    async def open(self) -> None:
        connected, _ = await self.comm.connect(timeout=5)
        assert connected

    async def read_until(self, done: Any, timeout: float = 5) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self.frames.append(json.loads(await self.comm.receive_from(timeout=timeout)))

    def view(self) -> set[str]:
        users: set[str] = set()
        for f in self.frames:
            if f["type"] == "presence_state":
                users = set(f["users"])
            elif f["type"] == "presence_diff":
                users = (users - set(f["leaves"])) | set(f["joins"])
        return users


async def test_joins_together_are_one_diff_and_nobody_hears_of_itself(runtime: Any) -> None:
    await sync_to_async(services.room_create)(slug="lobby", name="Lobby")
    first = Socket("first")
    await first.open()
    await first.read_until(lambda: first.view() == {"first"})
    sockets = [Socket(f"s{i}") for i in range(12)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    for s in sockets:  # as fast as they come: a few presence windows at most
        await s.open()
    took = loop.time() - started
    everyone = {"first", *(s.name for s in sockets)}
    for s in (first, *sockets):
        await s.read_until(lambda s=s: s.view() == everyone)
    for s in sockets:
        state = next(f for f in s.frames if f["type"] == "presence_state")
        assert s.name in state["users"]
        for f in s.frames:
            if f["type"] == "presence_diff":
                assert s.name not in f["joins"] and s.name not in f["leaves"], f
    diffs = [f for f in first.frames if f["type"] == "presence_diff"]
    # At most one diff per window while the joins came (and the first at once), not one each.
    assert len(diffs) <= 2 + took / WINDOW_S, (diffs, took)
    for s in (first, *sockets):
        await s.comm.disconnect()
