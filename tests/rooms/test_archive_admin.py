"""The archive in the admin: messages per room, searchable, filtered by author and date,
read only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from rooms import services
from rooms.models import Message, Room

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client: Client) -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


def archived(slug: str, rows: list[tuple[int, str, str, int]]) -> None:
    room, _ = services.room_create(slug=slug)
    now = datetime.now(tz=UTC)
    for seq, author, body, age_days in rows:
        Message.objects.create(
            room=room, seq=seq, message_id=f"m{seq}", author=f"n:{author}", author_name=author,
            body=body, created=now - timedelta(days=age_days),
        )  # fmt: skip


def listed(response: object) -> list[str]:
    return [m.message_id for m in response.context["cl"].result_list]  # type: ignore[attr-defined]


def test_messages_per_room_search_author_and_date(staff_client: Client) -> None:
    archived("one", [(1, "ann", "hello there", 3), (2, "bob", "bonjour", 2), (3, "ann", "x", 0)])
    archived("two", [(1, "cy", "hello from two", 0)])
    room_one = Room.objects.get(slug="one")
    base = "/admin/rooms/message/"
    page = staff_client.get(base)
    assert page.status_code == 200 and len(listed(page)) == 4
    in_one = staff_client.get(f"{base}?room__id__exact={room_one.pk}")
    assert sorted(listed(in_one)) == ["m1", "m2", "m3"]
    assert b"ann (2)" in in_one.content  # the author filter, counted in that room
    assert sorted(listed(staff_client.get(f"{base}?q=hello"))) == ["m1", "m1"]
    by_ann = staff_client.get(f"{base}?room__id__exact={room_one.pk}&author=ann")
    assert sorted(listed(by_ann)) == ["m1", "m3"]
    since = (datetime.now(tz=UTC) - timedelta(days=1)).isoformat()
    recent = staff_client.get(base, {"created__gte": since})  # the date filter's own form
    assert sorted(listed(recent)) == ["m1", "m3"]  # "two"'s m1 and "one"'s m3
    rooms_page = staff_client.get("/admin/rooms/room/")
    assert f"{base}?room__id__exact={room_one.pk}".encode() in rooms_page.content


def test_the_archive_is_read_only_in_the_admin(staff_client: Client) -> None:
    archived("one", [(1, "ann", "hello", 0)])
    message = Message.objects.get()
    assert staff_client.get("/admin/rooms/message/add/").status_code == 403
    change = staff_client.post(f"/admin/rooms/message/{message.pk}/change/", {"body": "rewritten"})
    assert change.status_code == 403
    assert (
        staff_client.post(f"/admin/rooms/message/{message.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert Message.objects.get().body == "hello"
