"""Reads: rooms as the views, the consumer and the cluster hooks need them."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.paginator import Page, Paginator
from django.db.models import Max

from cluster.keys import RoomKeys

from . import names
from .models import NameKey, Room

ROOMS_PER_PAGE = 50


def room_list() -> list[Room]:
    return list(Room.objects.active().order_by("name", "slug"))


def room_page(number: object, per_page: int = ROOMS_PER_PAGE) -> Page[Room]:
    """One page of the active rooms (a bad or too high page number gives the last page)."""
    paginator = Paginator(Room.objects.active().order_by("name", "slug"), per_page)
    return paginator.get_page(number)


async def room_apage(number: int, per_page: int = ROOMS_PER_PAGE) -> tuple[list[Room], bool]:
    """Rooms of page ``number`` (1-based) and whether a next page exists."""
    start = (number - 1) * per_page
    found = [
        room
        async for room in Room.objects.active().order_by("name", "slug")[
            start : start + per_page + 1
        ]
    ]
    return found[:per_page], len(found) > per_page


async def room_owners(redis: Any, slugs: list[str]) -> dict[str, str | None]:
    """Each room's lease holder (node name, or None), in one pipelined round trip."""
    if not slugs:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for slug in slugs:
            pipe.hget(RoomKeys(slug).lease, "node")
        rows = await pipe.execute()
    return {slug: (str(node) if node else None) for slug, node in zip(slugs, rows, strict=True)}


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


async def name_registered(name: str) -> bool:
    """Whether ``name`` is confusable with a registered user's name (rooms.names)."""
    return await NameKey.objects.filter(key__in=names.keys(name)).aexists()
