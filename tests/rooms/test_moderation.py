"""Guarantee 11, moderation half: moderating is a permission, not staff status; every moderation
action is logged with who did it; a socket loses its rights with its session.

From outside: the admin over HTTP, sockets through the ASGI app with real session cookies.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from chatsite.asgi import application
from cluster.keys import RoomKeys
from rooms import identity, services
from rooms.models import ModerationLog, Room

ACTIONS = ("archive_rooms", "unarchive_rooms", "purge_history", "move_rooms")


def staff_user(name: str, *codenames: str) -> Any:
    user = get_user_model().objects.create_user(name, password="pw-123-xyz", is_staff=True)
    for codename in ("view_room", *codenames):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return get_user_model().objects.get(pk=user.pk)


@pytest.fixture
def r(redis_url: str) -> Any:
    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    yield conn
    conn.close()


def fill_log(r: Any, slug: str, count: int) -> None:
    for i in range(1, count + 1):
        r.xadd(RoomKeys(slug).log, {"e": "{}"}, id=f"{i}-0")
    r.set(RoomKeys(slug).seq, count)


# -- the admin -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_staff_with_only_view_permission_gets_no_moderation_action(client: Client, r: Any) -> None:
    room, _ = services.room_create(slug="lobby")
    fill_log(r, "lobby", 3)
    client.force_login(staff_user("viewer"))
    page = client.get("/admin/rooms/room/")
    assert page.status_code == 200
    form = page.context["action_form"]  # None: no action at all is offered
    offered = {choice for choice, _ in form.fields["action"].choices} if form else set()
    assert not offered & set(ACTIONS)
    for action in ACTIONS:
        data = {"action": action, "_selected_action": [room.pk], "post": "yes"}
        client.post("/admin/rooms/room/", data)
    assert r.xlen(RoomKeys("lobby").log) == 3  # not purged
    room.refresh_from_db()
    assert not room.archived
    assert not ModerationLog.objects.exists()


@pytest.mark.django_db
def test_each_action_needs_its_own_permission(client: Client) -> None:
    client.force_login(staff_user("mod", "moderate_room"))
    offered = {
        choice
        for choice, _ in client.get("/admin/rooms/room/")
        .context["action_form"]
        .fields["action"]
        .choices
    }
    assert {"archive_rooms", "unarchive_rooms"} <= offered
    assert not {"purge_history", "move_rooms"} & offered


@pytest.mark.django_db
def test_purge_asks_for_confirmation_then_is_logged(client: Client, r: Any) -> None:
    room, _ = services.room_create(slug="lobby")
    fill_log(r, "lobby", 4)
    purger = staff_user("purger", "purge_history")
    client.force_login(purger)
    asked = client.post(
        "/admin/rooms/room/", {"action": "purge_history", "_selected_action": [room.pk]}
    )
    assert asked.status_code == 200
    assert "admin/rooms/room/action_confirmation.html" in [t.name for t in asked.templates]
    assert r.xlen(RoomKeys("lobby").log) == 4  # nothing yet
    done = client.post(
        "/admin/rooms/room/",
        {"action": "purge_history", "_selected_action": [room.pk], "post": "yes"},
    )
    assert done.status_code == 302
    assert r.xlen(RoomKeys("lobby").log) == 0
    entry = ModerationLog.objects.get()
    assert (entry.actor, entry.action, entry.room_slug) == (purger, "purge", "lobby")


@pytest.mark.django_db
def test_archive_and_room_delete_are_logged_with_who(client: Client, r: Any) -> None:
    room, _ = services.room_create(slug="lobby")
    admin_user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin_user)
    client.post(
        "/admin/rooms/room/",
        {"action": "archive_rooms", "_selected_action": [room.pk], "post": "yes"},
    )
    client.post(f"/admin/rooms/room/{room.pk}/delete/", {"post": "yes"})
    assert not Room.objects.filter(slug="lobby").exists()
    logged = list(ModerationLog.objects.order_by("id").values_list("actor_name", "action"))
    assert logged == [("root", "archive"), ("root", "delete")]


# -- sockets ---------------------------------------------------------------------------------


async def recv(comm: WebsocketCommunicator) -> dict[str, Any]:
    return json.loads(await comm.receive_from(timeout=5))


async def answer(comm: WebsocketCommunicator, client_id: str) -> dict[str, Any]:
    for _ in range(50):
        frame = await recv(comm)
        if frame["type"] in ("ack", "error") and frame.get("client_id") == client_id:
            return frame
    raise AssertionError(f"no answer to {client_id}")


async def session_socket(user: Any) -> tuple[WebsocketCommunicator, Client]:
    """A socket on a real logged-in session (the cookie goes through the session middleware)."""
    client = Client()
    await sync_to_async(client.force_login)(user)
    cookie = client.cookies["sessionid"].value
    comm = WebsocketCommunicator(
        application, "/ws/rooms/lobby/", headers=[(b"cookie", f"sessionid={cookie}".encode())]
    )
    assert (await comm.connect(timeout=5))[0]
    hello = await recv(comm)
    assert hello["type"] == "hello" and hello["user"] == user.get_username()
    return comm, client


async def guest_message(body: str = "a guest's words") -> WebsocketCommunicator:
    guest = WebsocketCommunicator(application, "/ws/rooms/lobby/?name=guest")
    assert (await guest.connect(timeout=5))[0]
    await guest.send_json_to({"type": "send", "body": body, "client_id": "g1"})
    assert (await answer(guest, "g1"))["type"] == "ack"
    return guest


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_staff_status_alone_cannot_change_others_messages(runtime: Any) -> None:
    await sync_to_async(services.room_create)(slug="lobby")
    guest = await guest_message()
    staff = await sync_to_async(staff_user)("staffer")
    comm, _ = await session_socket(staff)
    await comm.send_json_to({"type": "edit", "id": "m1", "body": "rewritten", "client_id": "e"})
    assert (await answer(comm, "e"))["code"] == "forbidden"
    await comm.send_json_to({"type": "delete", "id": "m1", "client_id": "d"})
    assert (await answer(comm, "d"))["code"] == "forbidden"
    await comm.disconnect()
    await guest.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_moderators_edit_shows_as_such_and_is_logged(runtime: Any) -> None:
    await sync_to_async(services.room_create)(slug="lobby")
    guest = await guest_message()
    mod = await sync_to_async(staff_user)("mod", "moderate_room")
    comm, _ = await session_socket(mod)
    await comm.send_json_to({"type": "edit", "id": "m1", "body": "[removed]", "client_id": "e"})
    assert (await answer(comm, "e"))["type"] == "ack"
    for _ in range(20):
        frame = await recv(guest)
        if frame["type"] == "edit":
            break
    assert frame["moderator"] is True and frame["user"] == "mod"
    entry = await ModerationLog.objects.aget()
    assert (entry.actor_id, entry.action, entry.target) == (mod.pk, "edit", "m1")
    await comm.disconnect()
    await guest.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_logout_closes_the_socket_with_4403(runtime: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(identity, "RECHECK_S", 0.0)
    await sync_to_async(services.room_create)(slug="lobby")
    user = await sync_to_async(get_user_model().objects.create_user)("ida", password="pw-1-xyz")
    comm, client = await session_socket(user)
    await comm.send_json_to({"type": "send", "body": "before", "client_id": "c1"})
    assert (await answer(comm, "c1"))["type"] == "ack"
    await sync_to_async(client.logout)()
    await comm.send_json_to({"type": "send", "body": "after", "client_id": "c2"})
    assert (await answer(comm, "c2"))["code"] == "forbidden"
    assert await closed_with(comm) == 4403


async def closed_with(comm: WebsocketCommunicator) -> int:
    for _ in range(20):
        output = await comm.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            return int(output["code"])
    raise AssertionError("not closed")


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_deactivation_closes_and_demotion_removes_rights(
    runtime: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(identity, "RECHECK_S", 0.0)
    await sync_to_async(services.room_create)(slug="lobby")
    guest = await guest_message("one")
    await guest.send_json_to({"type": "send", "body": "two", "client_id": "g2"})
    assert (await answer(guest, "g2"))["type"] == "ack"
    mod = await sync_to_async(staff_user)("mod", "moderate_room")
    comm, _ = await session_socket(mod)
    await comm.send_json_to({"type": "delete", "id": "m1", "client_id": "d1"})
    assert (await answer(comm, "d1"))["type"] == "ack"
    await sync_to_async(mod.user_permissions.clear)()  # demoted
    await comm.send_json_to({"type": "delete", "id": "m2", "client_id": "d2"})
    assert (await answer(comm, "d2"))["code"] == "forbidden"
    await get_user_model().objects.filter(pk=mod.pk).aupdate(is_active=False)  # deactivated
    await comm.send_json_to({"type": "send", "body": "still here?", "client_id": "c3"})
    assert (await answer(comm, "c3"))["code"] == "forbidden"
    assert await closed_with(comm) == 4403
    await guest.disconnect()
