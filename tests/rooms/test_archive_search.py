"""``GET /api/rooms/SLUG/search?q=``: words in the room's archived messages, newest first."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.test import Client

from rooms import services
from rooms.models import Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def lobby() -> None:
    room, _ = services.room_create(slug="lobby")
    other, _ = services.room_create(slug="other")
    now = datetime.now(tz=UTC)
    bodies = {
        1: "The Quick brown fox",
        2: "lazy dog",
        3: "quick quick",
        4: "100% sure_thing",
        5: "quick but deleted",
        6: "QUICK and brown",
    }
    for seq, body in bodies.items():
        Message.objects.create(
            room=room, seq=seq, message_id=f"m{seq}", author="n:ann", author_name="ann",
            body=body, created=now, deleted=now if seq == 5 else None,
        )  # fmt: skip
    Message.objects.create(
        room=other, seq=1, message_id="m1", author_name="x", body="quick elsewhere", created=now
    )


def search(client: Client, query: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    response = client.get(f"/api/rooms/lobby/search?{query}")
    return response.status_code, response.json()


def test_finds_every_word_case_insensitive_newest_first(client: Client, lobby: None) -> None:
    status, body = search(client, "q=quick")
    assert status == 200 and body["room"] == "lobby" and body["q"] == "quick"
    assert [m["seq"] for m in body["results"]] == [6, 3, 1]  # not the deleted one, nor "other"
    assert body["results"][0]["type"] == "message" and body["results"][0]["id"] == "m6"
    assert body["next_before"] is None
    _, both = search(client, "q=brown+QUICK")
    assert [m["seq"] for m in both["results"]] == [6, 1]
    _, literal = search(client, "q=%25+sure_")  # % and _ are text, not LIKE wildcards
    assert [m["seq"] for m in literal["results"]] == [4]
    _, none = search(client, "q=cat")
    assert none["results"] == []


def test_pages_with_before(client: Client, lobby: None) -> None:
    _, first = search(client, "q=quick&limit=2")
    assert [m["seq"] for m in first["results"]] == [6, 3] and first["next_before"] == 3
    _, rest = search(client, f"q=quick&limit=2&before={first['next_before']}")
    assert [m["seq"] for m in rest["results"]] == [1] and rest["next_before"] is None


def test_malformed_queries_are_refused(client: Client, lobby: None) -> None:
    for bad in ("", "q=", "q=+++", "q=" + "a" * 201, "q=a%00b", "q=a&before=x",
                "q=a&before=-1", "q=a&limit=0", "q=a&limit=many"):  # fmt: skip
        status, body = search(client, bad)
        assert status == 400 and body["error"] == "bad_request", bad
    assert client.get("/api/rooms/nope/search?q=a").status_code == 404
    assert client.get("/api/rooms/%00/search?q=a").status_code == 404
    services.room_archive(services.Room.objects.get(slug="lobby"))
    assert client.get("/api/rooms/lobby/search?q=quick").status_code == 404
