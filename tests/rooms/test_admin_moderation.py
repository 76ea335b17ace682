"""Moderating archived messages from the admin: the edit or delete goes through the room's owner
like a socket's (a real runtime on a real Redis), so the room's log, and every client, gets it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from rooms import services
from rooms.models import Message, ModerationLog, Room

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

CHANGELIST = "/admin/rooms/message/"


def _archived_message(slug: str, seq: int, message_id: str) -> Message:
    """The archive's row of an event that is in the log (what the archiver would write)."""
    room = Room.objects.get(slug=slug)
    return Message.objects.create(
        room=room, seq=seq, message_id=message_id, author="n:ann", author_name="ann",
        body="the original", created=datetime.now(tz=UTC),
    )  # fmt: skip


def _client(*, moderator: bool) -> Client:
    user = get_user_model().objects.create_user("mod" if moderator else "staff", password="pw")
    user.is_staff = True
    user.save()
    perms = ["view_message"] + (["moderate_room"] if moderator else [])
    user.user_permissions.set(Permission.objects.filter(codename__in=perms))
    client = Client()
    client.force_login(user)
    return client


async def _sent(runtime: Any) -> tuple[str, int]:
    await sync_to_async(services.room_create)(slug="lobby")
    author = services.Author("ann", "n:ann")
    result = await services.apost_message("lobby", "the original", author=author, client_id="a1")
    return result.id, result.seq


async def test_a_delete_from_the_admin_reaches_the_rooms_log(runtime: Any) -> None:
    message_id, seq = await _sent(runtime)
    row = await sync_to_async(_archived_message)("lobby", seq, message_id)
    client = await sync_to_async(_client)(moderator=True)
    form = {"action": "delete_through_room", "_selected_action": [str(row.pk)]}
    asked = await sync_to_async(client.post)(CHANGELIST, form)
    assert asked.status_code == 200 and b"Are you sure?" in asked.content  # nothing yet
    assert [e["type"] for e in (await runtime.events("lobby", after=0, limit=10)).events] == [
        "message"
    ]
    done = await sync_to_async(client.post)(CHANGELIST, {**form, "post": "yes"})
    assert done.status_code == 302
    events = (await runtime.events("lobby", after=0, limit=10)).events
    assert [(e["type"], e.get("id")) for e in events] == [
        ("message", message_id),
        ("delete", message_id),
    ]
    logged = await sync_to_async(list)(ModerationLog.objects.values_list("action", "target"))
    assert ("admin_delete", message_id) in logged


async def test_an_edit_from_the_admin_and_its_malformed_forms(runtime: Any) -> None:
    message_id, seq = await _sent(runtime)
    row = await sync_to_async(_archived_message)("lobby", seq, message_id)
    client = await sync_to_async(_client)(moderator=True)
    form = {"action": "edit_through_room", "_selected_action": [str(row.pk)], "post": "yes"}
    # Empty text: the socket's own refusal, shown on the form; the log is untouched.
    refused = await sync_to_async(client.post)(CHANGELIST, {**form, "body": "   "})
    assert refused.status_code == 200 and b"errornote" in refused.content
    assert len((await runtime.events("lobby", after=0, limit=10)).events) == 1
    # Two messages at once are refused before anything is sent.
    other = await sync_to_async(_archived_message)("lobby", seq + 100, "m999")
    two = {**form, "_selected_action": [str(row.pk), str(other.pk)], "body": "x"}
    warned = await sync_to_async(client.post)(CHANGELIST, two, follow=True)
    assert b"Choose exactly one message" in warned.content
    done = await sync_to_async(client.post)(CHANGELIST, {**form, "body": "fixed by a moderator"})
    assert done.status_code == 302
    events = (await runtime.events("lobby", after=0, limit=10)).events
    assert events[-1]["type"] == "edit" and events[-1]["body"] == "fixed by a moderator"
    assert events[-1]["id"] == message_id


async def test_without_the_permission_the_admin_offers_no_moderation(runtime: Any) -> None:
    message_id, seq = await _sent(runtime)
    row = await sync_to_async(_archived_message)("lobby", seq, message_id)
    client = await sync_to_async(_client)(moderator=False)
    page = await sync_to_async(client.get)(CHANGELIST)
    assert page.status_code == 200 and b"delete_through_room" not in page.content
    form = {"action": "delete_through_room", "_selected_action": [str(row.pk)], "post": "yes"}
    await sync_to_async(client.post)(CHANGELIST, form)
    assert len((await runtime.events("lobby", after=0, limit=10)).events) == 1  # not deleted
