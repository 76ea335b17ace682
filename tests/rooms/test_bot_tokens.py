"""Bot tokens (rooms/bots.py): made in the admin or by ``createbottoken``, shown once, kept
hashed, scoped, revoked."""

from __future__ import annotations

import hashlib
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client

from rooms import bots, services
from rooms.models import BotToken

pytestmark = pytest.mark.django_db

TOKEN = re.compile(r"chatbot_[A-Za-z0-9]{8}_[A-Za-z0-9_-]{43}")


@pytest.fixture
def staff_client(client: Client) -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


def test_admin_shows_a_new_token_once_and_keeps_its_hash(staff_client: Client) -> None:
    room, _ = services.room_create(slug="ops")
    page = staff_client.post(
        "/admin/rooms/bottoken/add/", {"name": "ci-bot", "rooms": [room.pk]}, follow=False
    )
    assert page.status_code == 200 and "no-store" in page["Cache-Control"]
    token = TOKEN.search(page.content.decode())
    assert token is not None
    bot = BotToken.objects.get()
    assert bot.name == "ci-bot" and list(bot.rooms.all()) == [room]
    assert bot.created_by is not None and bot.created_by.username == "root"
    assert bot.secret_hash == hashlib.sha256(token.group().encode()).hexdigest()
    assert bots.authenticate(token.group()) == bot
    # Never again: the change page does not show it.
    change = staff_client.get(f"/admin/rooms/bottoken/{bot.pk}/change/").content.decode()
    assert token.group() not in change and bot.key in change


def test_admin_refuses_a_name_that_looks_like_a_user(staff_client: Client) -> None:
    page = staff_client.post("/admin/rooms/bottoken/add/", {"name": "Rоot", "all_rooms": "on"})
    assert page.status_code == 200 and b"registered user" in page.content
    page = staff_client.post("/admin/rooms/bottoken/add/", {"name": "bad\u202ename"})
    assert page.status_code == 200 and not BotToken.objects.exists()


def test_admin_revoke_action(staff_client: Client) -> None:
    bot, token = bots.create(name="old-bot", all_rooms=True)
    staff_client.post(
        "/admin/rooms/bottoken/",
        {"action": "revoke_tokens", "_selected_action": [bot.pk]},
    )
    bot.refresh_from_db()
    assert bot.revoked
    with pytest.raises(bots.BotRefused, match="revoked"):
        bots.authenticate(token)


def test_authenticate_refuses_every_malformed_token() -> None:
    _, token = bots.create(name="a-bot", all_rooms=True)
    key = token.split("_")[1]
    for bad in ["", "chatbot_", "chatbot__x", f"chatbot_{key}", f"chatbot_{key}_", "x" * 300,
                token[:-2], token + "x", token.upper(), f"chatbot_{key}_{'A' * 43}",
                token.replace("chatbot_", "botchat_"), "chatbot_\ud800_x"]:  # fmt: skip
        with pytest.raises(bots.BotRefused, match="invalid bot token"):
            bots.authenticate(bad)
    assert bots.authenticate(token).name == "a-bot"


def test_createbottoken_prints_the_token(capsys: pytest.CaptureFixture[str]) -> None:
    services.room_create(slug="ops")
    call_command("createbottoken", "deploy", "--room", "ops")
    token = capsys.readouterr().out.strip()
    assert TOKEN.fullmatch(token)
    assert list(bots.authenticate(token).rooms.values_list("slug", flat=True)) == ["ops"]
    with pytest.raises(CommandError, match="no such room: nope"):
        call_command("createbottoken", "deploy", "--room", "nope")
    get_user_model().objects.create_user("mallory", password="pw-12345678")
    with pytest.raises(CommandError, match="registered"):
        call_command("createbottoken", "MALLORY", "--all-rooms")
    with pytest.raises(CommandError):
        call_command("createbottoken", "x")  # neither --room nor --all-rooms
