"""Guarantee 8: if Redis loses a room's log, seqs continue above anything known before."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from chatsite.asgi import application
from cluster.commands import Command
from cluster.errors import CommandError
from cluster.keys import RoomKeys
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


async def test_the_reservation_reaches_redis_only_with_an_append(runtime: Any) -> None:
    """Redis's reservation is written by the append itself (seq_recovery): an append that did
    not happen leaves none behind (a separate write would vouch for a log Redis lacks)."""
    await sync_to_async(services.room_create)(slug="lobby")
    await runtime.redis.set(RoomKeys("lobby").closed, "1")  # every append is refused
    with pytest.raises(CommandError):
        await runtime.submit("lobby", Command("send", "alice", "c1", body="refused"))
    assert await runtime.log.seq_state("lobby") == (0, 0)
    await runtime.redis.delete(RoomKeys("lobby").closed)
    ack = await runtime.submit("lobby", Command("send", "alice", "c2", body="kept"))
    reserved = (await Room.objects.aget(slug="lobby")).seq_high_water
    assert ack.seq == 1 and reserved >= 1
    assert await runtime.log.seq_state("lobby") == (1, reserved)


async def test_a_resumer_inside_a_hole_of_the_kept_range_gets_gap(runtime: Any) -> None:
    """Events lost inside the kept range (a replica that lagged): the room went on above them
    (the counter raised by the recovery); a resumer inside the hole is told, not skipped."""
    await sync_to_async(services.room_create)(slug="lobby")
    alice = WebsocketCommunicator(application, "/ws/rooms/lobby/?name=alice")
    assert (await alice.connect(timeout=5))[0]
    for i in range(5):
        await alice.send_json_to({"type": "send", "body": f"{i}", "client_id": f"c{i}"})
        assert (await recv_until(alice, "ack"))["seq"] == i + 1
    await runtime.log.raise_seq_floor("lobby", 200)  # what recover_start does after a loss
    page = await runtime.log.read("lobby", after=3)
    assert page.missing == [(6, 200)] and page.upto == 200
    await alice.disconnect()

    late = WebsocketCommunicator(application, "/ws/rooms/lobby/?name=late&after=3")
    assert (await late.connect(timeout=5))[0]
    assert (await recv_until(late, "message"))["seq"] == 4
    assert (await recv_until(late, "message"))["seq"] == 5
    assert (await recv_until(late, "gap"))["first_available"] == 201
    await late.disconnect()
