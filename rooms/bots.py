"""Bot tokens: made in the admin (or ``createbottoken``), kept hashed, scoped to rooms, revoked.

A token reads ``chatbot_<key>_<secret>``. The key finds its row; the SHA-256 of the whole
token is compared in constant time. A bot acts as the principal ``b:<token id>``: its rate
limit and dedupe belong to it, never to its display name.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from . import names
from .models import BotToken, NameKey, Room

PREFIX = "chatbot_"
KEY_BYTES = 6  # 8 URL-safe characters: enough to find a row, and not secret
SECRET_BYTES = 32
# last_used_at is written at most this often per token: an audit hint, not a write per post.
SEEN_EVERY = timedelta(seconds=60)
MAX_TOKEN_CHARS = 200  # a header longer than any token we make is no token
# What ``issue`` makes: the key is 8 letters and digits, the secret URL-safe base64.
_TOKEN = re.compile(r"chatbot_[A-Za-z0-9]{8}_[A-Za-z0-9_-]{20,100}")


class BotRefused(Exception):
    """The token may not post (unknown, revoked, out of scope, or its name now taken)."""


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a bot's display name: the rules of guest names (no invisible or
    control characters, at most 30 characters), and no confusion with a registered user."""
    problem = names.problem(name)
    if problem:
        return problem
    if NameKey.objects.filter(key__in=names.keys(names.normalize(name))).exists():
        return "That name is too close to a registered user's; a bot may not look like one."
    return None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def issue(bot: BotToken) -> str:
    """Give an unsaved (or saved) ``bot`` a fresh key and secret; returns the token, which is
    nowhere else from now on. The caller saves the row."""
    key = secrets.token_urlsafe(KEY_BYTES).replace("_", "x").replace("-", "y")
    token = f"{PREFIX}{key}_{secrets.token_urlsafe(SECRET_BYTES)}"
    bot.key = key
    bot.secret_hash = hash_token(token)
    return token


def create(
    *, name: str, rooms: list[Room] | None = None, all_rooms: bool = False, by: Any = None
) -> tuple[BotToken, str]:
    """A new token; returns (row, token). Raises ValidationError for a bad name."""
    problem = name_problem(name)
    if problem:
        raise ValidationError({"name": problem})
    bot = BotToken(
        name=names.normalize(name),
        all_rooms=all_rooms,
        created_by=by if getattr(by, "pk", None) else None,
    )
    token = issue(bot)
    bot.save()
    if rooms:
        bot.rooms.set(rooms)
    return bot, token


def revoke(bot: BotToken) -> None:
    if bot.revoked_at is None:
        bot.revoked_at = timezone.now()
        bot.save(update_fields=["revoked_at"])


def authenticate(token: str) -> BotToken:
    """The live token row for ``token``; raises BotRefused (one message for every unknown or
    malformed token, so that nothing tells a guesser which part was wrong)."""
    unknown = BotRefused("invalid bot token")
    if len(token) > MAX_TOKEN_CHARS or _TOKEN.fullmatch(token) is None:
        raise unknown  # before any query: no text a database may refuse (NUL, surrogates)
    key = token.removeprefix(PREFIX).partition("_")[0]
    bot = BotToken.objects.filter(key=key).first()
    if bot is None or not constant_time_compare(bot.secret_hash, hash_token(token)):
        raise unknown
    if bot.revoked:
        raise BotRefused("this bot token was revoked")
    return bot


def check_room(bot: BotToken, room: Room) -> None:
    """Raises BotRefused unless ``bot`` may post in ``room`` now."""
    if not bot.all_rooms and not bot.rooms.filter(pk=room.pk).exists():
        raise BotRefused(f"this bot token may not post in {room.slug!r}")
    # A user may have registered a look-alike name since the token was made.
    problem = name_problem(bot.name)
    if problem:
        raise BotRefused(f"the bot's name {bot.name!r} may not be used: {problem}")


def mark_used(bot: BotToken) -> None:
    now = timezone.now()
    if bot.last_used_at is None or now - bot.last_used_at >= SEEN_EVERY:
        BotToken.objects.filter(pk=bot.pk).update(last_used_at=now)
        bot.last_used_at = now
