"""Guarantee 8: if Redis loses a room's log, seqs continue above anything known before."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from chatsite.asgi import application
from rooms import services
from rooms.models import Room

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def recv_until(comm: WebsocketCommunicator, kind: str) -> dict[str, Any]:
    for _ in range(50):
        frame = json.loads(await comm.receive_from(timeout=10))
        if frame["type"] == kind:
            return frame
    raise AssertionError(f"no {kind} frame")


async def test_redis_losing_everything_never_renumbers(runtime: Any) -> None:
    await sync_to_async(services.room_create)(slug="lobby")
    alice = WebsocketCommunicator(application, "/ws/rooms/lobby/?name=alice")
    assert (await alice.connect(timeout=5))[0]
    for i in range(3):
        await alice.send_json_to({"type": "send", "body": f"{i}", "client_id": f"c{i}"})
        assert (await recv_until(alice, "ack"))["seq"] == i + 1
    reserved = (await Room.objects.aget(slug="lobby")).seq_high_water
    assert reserved >= 3

    await runtime.redis.flushall()  # Redis restarted without persistence
    await alice.send_json_to({"type": "send", "body": "after", "client_id": "c9"})
    ack = await recv_until(alice, "ack")
    assert ack["seq"] > reserved
    live = await recv_until(alice, "message")
    while live["seq"] != ack["seq"]:
        live = await recv_until(alice, "message")
    await alice.disconnect()

    late = WebsocketCommunicator(application, "/ws/rooms/lobby/?name=late&after=1")
    assert (await late.connect(timeout=5))[0]
    assert (await recv_until(late, "gap"))["first_available"] == ack["seq"]
    assert (await recv_until(late, "message"))["seq"] == ack["seq"]
    await late.disconnect()
