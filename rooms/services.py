"""Writes: every change to rooms goes through these functions (views, admin, commands)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from . import redis_admin
from .models import Room, slug_validator

GUEST_NAME_MAX = 30


def room_create(*, slug: str, name: str = "", by: Any = None) -> tuple[Room, bool]:
    """Create a room; returns (room, created). Idempotent on the slug."""
    slug = slug.strip().lower()
    slug_validator(slug)
    name = (name or slug).strip()
    if len(name) > 100:
        raise ValidationError({"name": "A room name has at most 100 characters."})
    existing = Room.objects.filter(slug=slug).first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            room = Room(slug=slug, name=name, created_by=by if getattr(by, "pk", None) else None)
            room.full_clean()
            room.save()
    except IntegrityError:
        return Room.objects.get(slug=slug), False
    return room, True


def room_archive(room: Room) -> None:
    """The room refuses new messages (checked by every append) and leaves the room list."""
    if room.archived_at is None:
        room.archived_at = timezone.now()
        room.save(update_fields=["archived_at"])
    redis_admin.room_close(room.slug)


def room_unarchive(room: Room) -> None:
    room.archived_at = None
    room.save(update_fields=["archived_at"])
    redis_admin.room_reopen(room.slug)


def room_purge_history(room: Room) -> int:
    """Delete the room's kept events; seqs go on from where they were (never reused)."""
    high = redis_admin.room_purge(room.slug)
    room_record_seq(room.slug, high)
    return high


def room_record_seq(slug: str, seq: int) -> None:
    Room.objects.filter(slug=slug, seq_high_water__lt=seq).update(seq_high_water=seq)


async def room_arecord_seq(slug: str, seq: int) -> None:
    """Record a new seq reservation before the room uses it (never lowers it): the cluster's
    ``RecordReservation`` hook (cluster.seq_recovery.Reservation)."""
    await Room.objects.filter(slug=slug, seq_high_water__lt=seq).aupdate(seq_high_water=seq)


def guest_name_error(name: str) -> str | None:
    """Why ``name`` cannot be a guest's display name, or None if it can."""
    cleaned = name.strip()
    if not cleaned:
        return "Choose a display name."
    if len(cleaned) > GUEST_NAME_MAX:
        return f"A display name has at most {GUEST_NAME_MAX} characters."
    if any(ord(c) < 32 or c == "\x7f" for c in cleaned):
        return "A display name cannot contain control characters."
    return None
