"""Writes: every change to rooms goes through these functions (views, admin, commands)."""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Any

import redis
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from . import archive, names, redis_admin
from .models import ModerationLog, NameKey, Room, RoomTombstone, slug_validator

# Posting a message from outside a socket (a view, a task, a bot): rooms/posting.py.
from .posting import Author as Author
from .posting import NoRuntime as NoRuntime
from .posting import PostResult as PostResult
from .posting import apost_message as apost_message
from .posting import post_message as post_message

logger = logging.getLogger("rooms.services")

GUEST_NAME_MAX = names.NAME_MAX
# The session key of a web guest: {"id": random, "name": display name}. The id is the guest's
# principal (``g:<id>``); it never leaves the server (frames say only ``"guest": true``).
GUEST_SESSION_KEY = "chat_guest"
ROOM_CREATORS = ("users", "staff", "anyone")


def room_create(
    *, slug: str, name: str = "", by: Any = None, principal: str = ""
) -> tuple[Room, bool]:
    """Create a room; returns (room, created). Idempotent on the slug. No policy: callers that
    act for a visitor go through ``room_create_for``. A slug that was deleted starts above the
    deleted room's seqs (its tombstone)."""
    slug = slug.strip().lower()
    slug_validator(slug)
    name = (name or slug).strip()
    if len(name) > 100:
        raise ValidationError({"name": "A room name has at most 100 characters."})
    existing = Room.objects.filter(slug=slug).first()
    if existing is not None:
        return existing, False
    tombstone = RoomTombstone.objects.filter(slug=slug).first()
    try:
        with transaction.atomic():
            room = Room(
                slug=slug,
                name=name,
                created_by=by if getattr(by, "pk", None) else None,
                created_by_principal=principal,
                seq_high_water=tombstone.seq_high_water if tombstone else 0,
            )
            room.full_clean()
            room.save()
    except IntegrityError:
        return Room.objects.get(slug=slug), False
    if tombstone is not None:
        # Deleting it closed the slug in Redis so that a still-running owner refuses appends.
        try:
            redis_admin.room_reopen(slug)
        except (redis.RedisError, OSError, RuntimeError):
            logger.warning("room %s re-created but its Redis flag could not be cleared", slug)
    return room, True


def room_creation_refusal(user: Any, principal: str = "") -> str | None:
    """Why this visitor may not create a room now: the policy (CHAT_ROOM_CREATORS), then,
    given the creator's ``principal``, the limit (CHAT_ROOMS_PER_USER)."""
    policy = settings.CHAT_ROOM_CREATORS
    signed_in = bool(getattr(user, "is_authenticated", False))
    if policy == "staff" and not (signed_in and user.is_staff):
        return "Only staff create rooms here."
    if policy == "users" and not signed_in:
        return "Log in to create a room."
    if policy == "anyone" and not signed_in and not settings.CHAT_ALLOW_GUESTS:
        return "Log in to create a room."
    if not principal or (signed_in and user.is_superuser):
        return None
    made = Room.objects.filter(created_by_principal=principal).count()
    if made >= settings.CHAT_ROOMS_PER_USER:
        return f"You have created {made} rooms, the most one person may create."
    return None


def room_create_for(
    *, user: Any, session: SessionBase, slug: str, name: str = ""
) -> tuple[Room, bool]:
    """A visitor creates a room: the policy first (PermissionDenied), then ``room_create``."""
    if Room.objects.filter(slug=slug.strip().lower()).exists():
        return room_create(slug=slug, name=name)  # idempotent: an existing room, no new one
    refusal = room_creation_refusal(user)
    if refusal:
        raise PermissionDenied(refusal)
    if getattr(user, "is_authenticated", False):
        principal = f"u:{user.pk}"
    else:
        # Counted per browser session; a one-way token of its guest id (the id stays there).
        principal = "g:" + hashlib.sha256(guest_id(session).encode()).hexdigest()[:24]
    refusal = room_creation_refusal(user, principal)
    if refusal:
        raise PermissionDenied(refusal)
    return room_create(slug=slug, name=name, by=user, principal=principal)


def room_archive(room: Room, *, by: Any = None) -> None:
    """The room refuses new messages (checked by every append) and leaves the room list."""
    if room.archived_at is None:
        room.archived_at = timezone.now()
        room.save(update_fields=["archived_at"])
    redis_admin.room_close(room.slug)
    moderation_log(by, "archive", room.slug)


def room_unarchive(room: Room, *, by: Any = None) -> None:
    room.archived_at = None
    room.save(update_fields=["archived_at"])
    redis_admin.room_reopen(room.slug)
    moderation_log(by, "unarchive", room.slug)


def room_purge_history(room: Room, *, by: Any = None) -> int:
    """Delete the room's kept events; seqs go on from where they were (never reused). The
    owner is fenced in the same step, so its in-memory window is never written back."""
    high = redis_admin.room_purge(room.slug)
    room_record_seq(room.slug, high)
    archive.purge_room(room.pk, high)  # or reads would find it there
    moderation_log(by, "purge", room.slug, detail=f"events up to seq {high}")
    return high


def room_move(room: Room, *, by: Any = None) -> int:
    heard = redis_admin.room_move(room.slug)
    moderation_log(by, "move", room.slug)
    return heard


def room_tombstone(room: Room) -> int:
    """Remember a deleted room's seq high water (the database's and Redis's, whichever is
    higher); returns it."""
    high = room.seq_high_water
    try:
        high = max(high, redis_admin.room_high_water(room.slug))
    except (redis.RedisError, OSError, RuntimeError):
        logger.warning("room %s deleted with Redis unreachable: tombstone from the database only",
                       room.slug)  # fmt: skip
    tombstone, created = RoomTombstone.objects.get_or_create(
        slug=room.slug, defaults={"seq_high_water": high}
    )
    if not created and tombstone.seq_high_water < high:
        tombstone.seq_high_water = high
        tombstone.save(update_fields=["seq_high_water", "deleted_at"])
    return max(high, tombstone.seq_high_water)


def room_forget_redis(slug: str, high: int) -> None:
    """A deleted room's Redis keys go (its log, state, presence, dedupe keys)."""
    try:
        redis_admin.room_forget(slug)
    except (redis.RedisError, OSError, RuntimeError):
        logger.exception("room %s deleted but its Redis keys are still there", slug)


def moderation_log(actor: Any, action: str, slug: str, target: str = "", detail: str = "") -> None:
    signed_in = bool(getattr(actor, "is_authenticated", False))
    ModerationLog.objects.create(
        actor=actor if signed_in else None,
        actor_name=actor.get_username() if signed_in else "system",
        action=action,
        room_slug=slug,
        target=target,
        detail=detail,
    )


async def moderation_alog(
    *, user_id: int | None, name: str, action: str, slug: str, target: str = ""
) -> None:
    """A moderator's edit or delete over a socket, logged after its ack."""
    await ModerationLog.objects.acreate(
        actor_id=user_id, actor_name=name, action=action, room_slug=slug, target=target
    )


def name_keys_refresh(user: Any) -> None:
    """Keep the confusable keys of ``user``'s name in step with it."""
    wanted = names.keys(user.get_username())
    have = set(NameKey.objects.filter(user=user).values_list("key", flat=True))
    if have == wanted:
        return
    NameKey.objects.filter(user=user).exclude(key__in=wanted).delete()
    NameKey.objects.bulk_create(
        [NameKey(user=user, key=key) for key in wanted - have], ignore_conflicts=True
    )


def guest_id(session: SessionBase) -> str:
    """The session's guest id, made on first use (kept for the session's life)."""
    guest = session.get(GUEST_SESSION_KEY)
    if isinstance(guest, dict) and isinstance(guest.get("id"), str):
        return str(guest["id"])
    new = secrets.token_urlsafe(18)
    session[GUEST_SESSION_KEY] = {"id": new, "name": ""}
    return new


def guest_join(session: SessionBase, name: str) -> str:
    """The web guest form: check the name, keep it in the session with a guest id; returns the
    name as it will be shown. Raises ValidationError."""
    problem = guest_name_error(name)
    if problem:
        raise ValidationError(problem)
    shown = names.normalize(name)
    if name_is_registered(shown):
        raise ValidationError("That name is too close to a registered user's; choose another.")
    session[GUEST_SESSION_KEY] = {"id": guest_id(session), "name": shown}
    return shown


def name_is_registered(name: str) -> bool:
    return NameKey.objects.filter(key__in=names.keys(name)).exists()


def room_record_seq(slug: str, seq: int) -> None:
    Room.objects.filter(slug=slug, seq_high_water__lt=seq).update(seq_high_water=seq)


async def room_arecord_seq(slug: str, seq: int) -> None:
    """Record a new seq reservation before the room uses it (never lowers it): the cluster's
    ``RecordReservation`` hook (cluster.seq_recovery.Reservation)."""
    await Room.objects.filter(slug=slug, seq_high_water__lt=seq).aupdate(seq_high_water=seq)


def guest_name_error(name: str) -> str | None:
    """Why ``name`` cannot be a guest's display name, or None if it can (shape only; who else
    uses it is checked by ``guest_join`` and the socket)."""
    return names.problem(name)
