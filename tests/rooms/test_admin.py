"""The rooms admin: list with Redis stats (one batch per page), search, filters, actions."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from django.contrib.auth import get_user_model
from django.test import Client

from cluster import keys
from cluster.fanout import SEP
from cluster.keys import RoomKeys
from rooms import services
from rooms.models import Room

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client: Client) -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def r(redis_url: str) -> Any:
    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    yield conn
    conn.close()


def fake_live_node(r: Any, name: str) -> None:
    secs, micros = r.time()
    r.zadd(keys.NODES, {name: int(secs) * 1000 + int(micros) // 1000})


def test_changelist_shows_online_and_messages_from_redis(staff_client: Client, r: Any) -> None:
    services.room_create(slug="busy", name="Busy")
    services.room_create(slug="quiet", name="Quiet")
    fake_live_node(r, "n1")
    r.hset(
        RoomKeys("busy").presence, mapping={f"n1{SEP}ann": 1, f"n1{SEP}bob": 2, f"dead{SEP}x": 1}
    )
    for i in range(1, 4):
        r.xadd(RoomKeys("busy").log, {"e": "{}"}, id=f"{i}-0")
    response = staff_client.get("/admin/rooms/room/")
    assert response.status_code == 200
    rows = {room.slug: room.redis_stats for room in response.context["cl"].result_list}
    assert rows["busy"].online == ["ann", "bob"]  # the dead node's entry does not count
    assert rows["busy"].messages == 3
    assert rows["quiet"].online == [] and rows["quiet"].messages == 0
    assert b"Busy" in response.content


def test_changelist_survives_redis_being_down(staff_client: Client, settings: Any) -> None:
    services.room_create(slug="busy")
    settings.CHAT_REDIS_URL = "redis://127.0.0.1:1/0"
    response = staff_client.get("/admin/rooms/room/")
    assert response.status_code == 200
    assert "–" in response.content.decode()


def test_search_and_status_filter(staff_client: Client) -> None:
    services.room_create(slug="alpha", name="Alpha team")
    old, _ = services.room_create(slug="beta", name="Beta")
    services.room_archive(old)
    found = staff_client.get("/admin/rooms/room/?q=alpha").context["cl"].result_list
    assert [room.slug for room in found] == ["alpha"]
    archived = staff_client.get("/admin/rooms/room/?status=archived").context["cl"].result_list
    assert [room.slug for room in archived] == ["beta"]
    active = staff_client.get("/admin/rooms/room/?status=active").context["cl"].result_list
    assert [room.slug for room in active] == ["alpha"]


def test_archive_and_unarchive_actions(staff_client: Client, r: Any) -> None:
    room, _ = services.room_create(slug="lobby")
    response = staff_client.post(
        "/admin/rooms/room/",
        {"action": "archive_rooms", "_selected_action": [room.pk], "post": "yes"},
    )
    assert response.status_code == 302
    room.refresh_from_db()
    assert room.archived and r.exists(RoomKeys("lobby").closed)
    assert "lobby" not in [x.slug for x in Room.objects.active()]
    staff_client.post(
        "/admin/rooms/room/",
        {"action": "unarchive_rooms", "_selected_action": [room.pk], "post": "yes"},
    )
    room.refresh_from_db()
    assert not room.archived and not r.exists(RoomKeys("lobby").closed)


def test_purge_keeps_seqs_going_up(staff_client: Client, r: Any) -> None:
    room, _ = services.room_create(slug="lobby")
    for i in range(1, 6):
        r.xadd(RoomKeys("lobby").log, {"e": "{}"}, id=f"{i}-0")
    r.set(RoomKeys("lobby").seq, 5)
    staff_client.post(
        "/admin/rooms/room/",
        {"action": "purge_history", "_selected_action": [room.pk], "post": "yes"},
    )
    assert r.xlen(RoomKeys("lobby").log) == 0
    assert r.get(RoomKeys("lobby").seq) == "5"
    room.refresh_from_db()
    assert room.seq_high_water >= 5


def test_move_action_asks_the_owner(staff_client: Client, r: Any) -> None:
    room, _ = services.room_create(slug="lobby")
    listener = r.pubsub()
    listener.subscribe(keys.CLUSTER_CHANNEL)
    listener.get_message(timeout=1)
    confirmed = {"action": "move_rooms", "_selected_action": [room.pk], "post": "yes"}
    staff_client.post("/admin/rooms/room/", confirmed)
    message = listener.get_message(timeout=2)
    assert message is not None and '"op": "move"' in message["data"]
    listener.close()


def test_admin_needs_staff(client: Client) -> None:
    assert client.get("/admin/rooms/room/").status_code == 302
