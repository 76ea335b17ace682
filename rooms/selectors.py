"""Reads: rooms as the views, the consumer and the cluster hooks need them."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Max

from .models import Room


def room_list() -> list[Room]:
    return list(Room.objects.active().order_by("name", "slug"))


def room_get(slug: str) -> Room | None:
    return Room.objects.filter(slug=slug).first()


async def room_aget(slug: str) -> Room | None:
    return await Room.objects.filter(slug=slug).afirst()


async def room_seq_floor(slug: str) -> int:
    """The room's newest seq reservation (cluster.seq_recovery: every seq ever issued is at or
    below it, and it was made at seq ``reservation - RESERVE_BLOCK``); 0 for none."""
    found = await Room.objects.filter(slug=slug).aaggregate(floor=Max("seq_high_water"))
    return int(found["floor"] or 0)


async def username_taken(name: str) -> bool:
    return await get_user_model().objects.filter(username__iexact=name).aexists()
