"""Rooms: who creates them, how many; archived and deleted rooms leak nothing; lists are
paginated with owners read in one batch; purge leaves nothing in the owner's memory.

From outside where it can be: HTTP (the web form, the API), sockets, the admin's services.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import AsyncClient, Client

from chatsite.asgi import application
from cluster.commands import Command
from cluster.errors import CommandError
from cluster.keys import RoomKeys
from rooms import services
from rooms.models import Room

HTMX = {"HTTP_HX_REQUEST": "true"}


def user(name: str, **extra: Any) -> Any:
    return get_user_model().objects.create_user(name, password="pw-123-xyz", **extra)


# -- who creates rooms -----------------------------------------------------------------------


@pytest.mark.django_db
def test_by_default_only_registered_users_create_rooms(client: Client) -> None:
    assert client.post("/rooms/new/", {"slug": "spam"}, **HTMX).status_code == 403
    assert not Room.objects.filter(slug="spam").exists()
    client.force_login(user("alice"))
    assert client.post("/rooms/new/", {"slug": "mine"}, **HTMX)["HX-Redirect"] == "/r/mine/"


@pytest.mark.django_db
def test_staff_only_creation(client: Client, settings: Any) -> None:
    settings.CHAT_ROOM_CREATORS = "staff"
    client.force_login(user("bob"))
    assert client.post("/rooms/new/", {"slug": "nope"}, **HTMX).status_code == 403
    client.force_login(user("boss", is_staff=True))
    assert client.post("/rooms/new/", {"slug": "yes"}, **HTMX)["HX-Redirect"] == "/r/yes/"


@pytest.mark.django_db
def test_a_user_creates_at_most_the_limit(client: Client, settings: Any) -> None:
    settings.CHAT_ROOMS_PER_USER = 2
    client.force_login(user("carol"))
    for slug in ("one", "two"):
        assert client.post("/rooms/new/", {"slug": slug}, **HTMX).status_code == 200
    refused = client.post("/rooms/new/", {"slug": "three"}, **HTMX)
    assert refused.status_code == 422 and "most one person may create" in refused.content.decode()
    assert not Room.objects.filter(slug="three").exists()
    # An existing room is no new room: going to it is no refusal.
    assert client.post("/rooms/new/", {"slug": "one"}, **HTMX)["HX-Redirect"] == "/r/one/"


@pytest.mark.django_db
def test_guests_when_anyone_may_are_limited_per_session(client: Client, settings: Any) -> None:
    settings.CHAT_ROOM_CREATORS = "anyone"
    settings.CHAT_ROOMS_PER_USER = 1
    assert client.post("/rooms/new/", {"slug": "g1"}, **HTMX)["HX-Redirect"] == "/r/g1/"
    assert client.post("/rooms/new/", {"slug": "g2"}, **HTMX).status_code == 422


# -- archived and deleted rooms --------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_an_archived_room_is_404_on_every_read_path(runtime: Any) -> None:
    room, _ = await sync_to_async(services.room_create)(slug="old")
    await runtime.submit("old", Command("send", "u", "c1", body="secret"))
    await sync_to_async(services.room_archive)(room)
    client = AsyncClient()
    assert (await client.get("/api/rooms/old/events")).status_code == 404
    assert (await client.get("/api/rooms/old/events?before=5")).status_code == 404
    assert (await client.get("/r/old/")).status_code == 404
    assert "old" not in (await client.get("/api/rooms/")).content.decode()
    comm = WebsocketCommunicator(application, "/ws/rooms/old/?name=a&after=0")
    assert (await comm.connect(timeout=5))[0]
    output = await comm.receive_output(timeout=5)
    while output["type"] != "websocket.close":
        assert "secret" not in output.get("text", "")
        output = await comm.receive_output(timeout=5)
    assert output["code"] == 4403


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_deleted_room_leaves_no_events_and_its_seqs_never_restart(
    runtime: Any, redis_url: str
) -> None:
    await sync_to_async(services.room_create)(slug="gone")
    for i in range(5):
        await runtime.submit("gone", Command("send", "u", f"c{i}", body=f"old {i}"))
    await Room.objects.filter(slug="gone").adelete()  # a queryset delete, as scripts do
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert not r.exists(RoomKeys("gone").log, RoomKeys("gone").state)
        assert not list(r.scan_iter(match=f"{RoomKeys('gone').tag}:dedupe:*"))
    finally:
        r.close()
    # Someone creates the slug again: none of the old events, and seqs above the old ones.
    await sync_to_async(services.room_create)(slug="gone")
    ack = await runtime.submit("gone", Command("send", "v", "n1", body="new"))
    assert ack.seq > 5
    page = (await AsyncClient().get("/api/rooms/gone/events?after=0")).json()
    assert [e["body"] for e in page["events"]] == ["new"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_purge_leaves_nothing_in_the_owners_window(runtime: Any) -> None:
    room, _ = await sync_to_async(services.room_create)(slug="lobby")
    for i in range(3):
        await runtime.submit("lobby", Command("send", "u", f"c{i}", body=f"m{i}"))
    server = runtime.supervisor.get("lobby")
    assert server is not None and server.state.message("m1") is not None
    await sync_to_async(services.room_purge_history)(room)
    # The owner's memory still had m1: an edit of it must not come back from there.
    with pytest.raises(CommandError) as refused:
        await runtime.submit("lobby", Command("edit", "u", "e1", body="x", id="m1"))
    assert refused.value.code == "not_found"
    ack = await runtime.submit("lobby", Command("send", "u", "c9", body="after"))
    assert ack.seq == 4
    new_server = runtime.supervisor.get("lobby")
    assert new_server is not None and new_server.state.message("m1") is None
    await new_server.snapshot()
    page = (await AsyncClient().get("/api/rooms/lobby/events?after=0")).json()
    assert [e["body"] for e in page["events"]] == ["after"]


# -- room lists ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_room_lists_are_paginated_with_owners_in_one_batch(
    runtime: Any, monkeypatch: Any
) -> None:
    for i in range(60):
        await sync_to_async(services.room_create)(slug=f"room-{i:02d}")
    await runtime.submit("room-00", Command("send", "u", "c", body="hi"))

    async def one_by_one(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("owners are read in one pipelined batch, not one lookup per room")

    monkeypatch.setattr(runtime.registry, "lookup", one_by_one)
    client = AsyncClient()
    first = (await client.get("/api/rooms/")).json()
    assert len(first["rooms"]) == 50 and first["next"] == 2
    assert first["rooms"][0] == {"slug": "room-00", "name": "room-00", "owner": "test-node",
                                 "online": 0}  # fmt: skip
    second = (await client.get("/api/rooms/?page=2")).json()
    assert [x["slug"] for x in second["rooms"]] == [f"room-{i}" for i in range(50, 60)]
    assert second["next"] is None
    assert (await client.get("/api/rooms/?page=0")).status_code == 400
    assert (await client.get("/api/rooms/?page=x")).status_code == 400
    home = (await client.get("/?page=2")).content.decode()
    assert "/r/room-59/" in home and "/r/room-00/" not in home and 'rel="prev"' in home


def test_home_page_list_is_one_page(client: Client, db: Any) -> None:
    for i in range(55):
        services.room_create(slug=f"r{i:02d}")
    html = client.get("/").content.decode()
    assert "/r/r49/" in html and "/r/r50/" not in html and 'rel="next"' in html
