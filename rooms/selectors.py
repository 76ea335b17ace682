"""Reads: rooms as the views, the consumer and the cluster hooks need them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from asgiref.sync import sync_to_async
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


K = TypeVar("K")
V = TypeVar("V")


class Batched(Generic[K, V]):
    """Lookups (or writes) of one kind asked at the same time answered by ONE query.

    Django runs async ORM calls one at a time on its single sync thread, so a connect storm of
    N sockets waited for N queries in a row. Here the first caller runs a query for every key
    asked so far; whoever asks meanwhile waits for the next one, which covers them all. Nothing
    is cached: every answer is read after it was asked for (an archived room is refused by the
    next socket, whatever node archived it).
    """

    def __init__(self, fetch: Callable[[list[K]], Awaitable[dict[K, V]]], missing: V) -> None:
        self._fetch = fetch
        self._missing = missing
        self._waiting: dict[K, list[asyncio.Future[V]]] = {}
        self._turn: asyncio.Future[None] | None = None  # done when the query in flight ends
        self._loop: asyncio.AbstractEventLoop | None = None

    async def get(self, key: K) -> V:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests run one each): nothing of the old one
            self._loop, self._waiting, self._turn = loop, {}, None
        answer: asyncio.Future[V] = loop.create_future()
        self._waiting.setdefault(key, []).append(answer)
        try:
            while not answer.done():
                if self._turn is None:
                    await self._lead(loop)
                else:
                    await asyncio.wait([answer, self._turn], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            answer.cancel()  # whoever answers next skips it
            raise
        return answer.result()

    async def _lead(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._waiting = self._waiting, {}
        turn = self._turn = loop.create_future()
        try:
            found = await self._fetch(list(batch))
        except asyncio.CancelledError:
            # The caller who led went away: the others wait for the next query, not for ever.
            for key, answers in batch.items():
                self._waiting.setdefault(key, []).extend(a for a in answers if not a.done())
            raise
        except Exception as exc:
            for answers in batch.values():
                for a in answers:
                    if not a.done():
                        a.set_exception(exc)
        else:
            for key, answers in batch.items():
                for a in answers:
                    if not a.done():
                        a.set_result(found.get(key, self._missing))
        finally:
            self._turn = None
            turn.set_result(None)


@sync_to_async
def _rooms_by_slug(slugs: list[str]) -> dict[str, Room | None]:
    return {room.slug: room for room in Room.objects.filter(slug__in=slugs)}


_rooms: Batched[str, Room | None] = Batched(_rooms_by_slug, None)


async def room_aget(slug: str) -> Room | None:
    """The room, read now; concurrent callers share one query (a connect storm)."""
    return await _rooms.get(slug)


async def room_seq_floor(slug: str) -> int:
    """The room's newest seq reservation (cluster.seq_recovery: every seq ever issued is at or
    below it, and it was made at seq ``reservation - RESERVE_BLOCK``); 0 for none."""
    found = await Room.objects.filter(slug=slug).aaggregate(floor=Max("seq_high_water"))
    return int(found["floor"] or 0)


async def username_taken(name: str) -> bool:
    return await get_user_model().objects.filter(username__iexact=name).aexists()


@sync_to_async
def _registered_names(wanted: list[str]) -> dict[str, bool]:
    keys = {name: names.keys(name) for name in wanted}
    every = set().union(*keys.values())
    found = set(NameKey.objects.filter(key__in=every).values_list("key", flat=True))
    return {name: bool(mine & found) for name, mine in keys.items()}


_names: Batched[str, bool] = Batched(_registered_names, False)


async def name_registered(name: str) -> bool:
    """Whether ``name`` is confusable with a registered user's name (rooms.names), read now;
    concurrent callers share one query."""
    return await _names.get(name)
