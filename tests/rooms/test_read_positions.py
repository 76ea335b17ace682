"""Read positions (rooms.read_positions) and their endpoint ``POST /r/SLUG/read``: the web
chat's unread counts and "new messages" line."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from django.test import Client

from cluster.keys import RoomKeys
from rooms import services
from rooms.identity import guest_principal
from rooms.models import ReadPosition

pytestmark = pytest.mark.django_db

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
def user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("alice", password="correct horse battery")


@pytest.fixture
def alice(client: Client, user: Any) -> Client:
    client.force_login(user)
    return client


def log_events(redis_url: str, slug: str, events: list[dict[str, Any]]) -> None:
    """Append events to the room's log as the room server does (stream id = seq)."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    k = RoomKeys(slug)
    seq = int(r.get(k.seq) or 0)
    for event in events:
        seq += 1
        r.xadd(k.log, {"e": json.dumps(event)}, id=f"{seq}-0")
    r.set(k.seq, seq)
    r.close()


def message(author: str, body: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"type": "message", "user": author, "author": author, "body": body, "ts": 1, **extra}


def read(client: Client, slug: str, **data: str) -> Any:
    return client.post(f"/r/{slug}/read", data)


def unread_badge(html: str, slug: str) -> str | None:
    marker = f'<span class="unread-count" data-room="{slug}">'
    if marker not in html:
        return None
    start = html.index(marker) + len(marker)
    return html[start : html.index("<", start)]


# -- the endpoint ----------------------------------------------------------------------------


def test_a_user_records_a_position_and_it_never_goes_back(
    alice: Client, user: Any, redis_url: str
) -> None:
    services.room_create(slug="lobby")
    log_events(redis_url, "lobby", [message("u:99")] * 5)

    first = read(alice, "lobby", seq="3")
    assert first.status_code == 200 and first.json() == {"last_seq": 3}
    assert read(alice, "lobby", seq="5").json() == {"last_seq": 5}
    older = read(alice, "lobby", seq="2")  # an old tab reports late
    assert older.status_code == 200 and older.json() == {"last_seq": 5}
    assert ReadPosition.objects.get(user=user, room__slug="lobby").last_seq == 5


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        ({}, "seq is required"),
        ({"seq": ""}, "must be a whole number"),
        ({"seq": "-1"}, "must be a whole number"),
        ({"seq": "1.5"}, "must be a whole number"),
        ({"seq": " 2"}, "must be a whole number"),
        ({"seq": "²"}, "must be a whole number"),
        ({"seq": "1e3"}, "must be a whole number"),
        ({"seq": "9" * 40}, "above the largest seq"),
        ({"seq": "7"}, "above the room's last seq"),  # only 5 were issued
    ],
    ids=["missing", "empty", "negative", "fraction", "space", "superscript", "exponent",
         "huge", "not-issued"],
)  # fmt: skip
def test_malformed_seqs_are_refused_with_400(
    alice: Client, user: Any, redis_url: str, data: dict[str, str], detail: str
) -> None:
    services.room_create(slug="lobby")
    log_events(redis_url, "lobby", [message("u:99")] * 5)
    assert read(alice, "lobby", seq="4").status_code == 200

    response = read(alice, "lobby", **data)

    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"
    assert detail in response.json()["detail"]
    assert ReadPosition.objects.get(user=user).last_seq == 4, "nothing moved"


def test_the_endpoint_takes_post_only_and_needs_csrf(user: Any, redis_url: str) -> None:
    services.room_create(slug="lobby")
    log_events(redis_url, "lobby", [message("u:99")])
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)

    assert strict.get("/r/lobby/read").status_code == 405
    assert strict.post("/r/lobby/read", {"seq": "1"}).status_code == 403  # no token
    page = strict.get("/r/lobby/")
    token = page.cookies["csrftoken"].value
    ok = strict.post("/r/lobby/read", {"seq": "1"}, headers={"X-CSRFToken": token})
    assert ok.status_code == 200 and ok.json() == {"last_seq": 1}


def test_no_reader_no_room_no_redis(client: Client, user: Any, settings: Any) -> None:
    services.room_create(slug="lobby")
    refused = read(client, "lobby", seq="0")  # anonymous, never joined as a guest
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"

    client.force_login(user)
    assert read(client, "nowhere", seq="0").status_code == 404
    settings.CHAT_REDIS_URL = UNREACHABLE_REDIS
    down = read(client, "lobby", seq="0")
    assert down.status_code == 503 and down.json()["code"] == "unavailable"
    assert not ReadPosition.objects.exists()


def test_a_guest_keeps_positions_in_the_session(client: Client, redis_url: str) -> None:
    services.room_create(slug="lobby")
    log_events(redis_url, "lobby", [message("u:99")] * 3)
    assert client.post("/r/lobby/guest", {"name": "sam"}).status_code == 200

    assert read(client, "lobby", seq="2").json() == {"last_seq": 2}
    assert read(client, "lobby", seq="1").json() == {"last_seq": 2}

    assert client.session["chat_read"] == {"lobby": 2}
    assert not ReadPosition.objects.exists()
    page = client.get("/r/lobby/").content.decode()
    assert '"lastRead": 2' in page


# -- unread counts on the home page -----------------------------------------------------------


def test_home_counts_others_messages_after_the_position(
    alice: Client, user: Any, redis_url: str
) -> None:
    services.room_create(slug="lobby")
    services.room_create(slug="never-read")
    me, other = f"u:{user.pk}", "u:99"
    log_events(redis_url, "lobby", [message(other), message(other)])
    log_events(redis_url, "never-read", [message(other)])
    assert read(alice, "lobby", seq="2").status_code == 200
    assert unread_badge(alice.get("/").content.decode(), "lobby") is None

    log_events(
        redis_url,
        "lobby",
        [
            message(other, id="m3"),  # seq 3
            message(me),  # 4: one's own is never unread
            message(other, id="m5"),  # 5, deleted at 7
            {"type": "edit", "id": "m3", "user": other, "author": other, "body": "x", "ts": 1},
            {"type": "delete", "id": "m5", "user": other, "author": other, "ts": 1},
            message(other, id="m8"),  # 8
        ],
    )

    html = alice.get("/").content.decode()
    assert unread_badge(html, "lobby") == "2"
    assert " unread messages</span>" in html
    assert unread_badge(html, "never-read") is None, "a room never opened shows no count"
    config = alice.get("/r/lobby/").content.decode()
    assert '"lastRead": 2' in config


def test_a_long_backlog_shows_a_floor(alice: Client, redis_url: str) -> None:
    services.room_create(slug="busy")
    log_events(redis_url, "busy", [message("u:99")])
    read(alice, "busy", seq="1")
    log_events(redis_url, "busy", [message("u:99")] * 150)

    assert unread_badge(alice.get("/").content.decode(), "busy") == "100+"


def test_guest_counts_skip_the_guests_own_messages(client: Client, redis_url: str) -> None:
    services.room_create(slug="lobby")
    client.post("/r/lobby/guest", {"name": "sam"})
    guest_id = client.session[services.GUEST_SESSION_KEY]["id"]
    mine = guest_principal(guest_id, "lobby")
    log_events(redis_url, "lobby", [message("u:99")])
    read(client, "lobby", seq="1")
    log_events(redis_url, "lobby", [message(mine), message("u:99"), message(mine)])

    assert unread_badge(client.get("/").content.decode(), "lobby") == "1"


def test_home_without_redis_shows_no_counts(alice: Client, user: Any, settings: Any) -> None:
    room, _ = services.room_create(slug="lobby")
    ReadPosition.objects.create(user=user, room=room, last_seq=1)
    settings.CHAT_REDIS_URL = UNREACHABLE_REDIS

    html = alice.get("/").content.decode()

    assert "/r/lobby/" in html and unread_badge(html, "lobby") is None
    assert "unknown right now" in html
