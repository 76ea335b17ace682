"""Admission lookups shared by concurrent sockets (a connect storm): one query answers every
caller that asked meanwhile, each answer is read after it was asked for, and a failure or a
cancelled caller leaves nobody waiting."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model

from rooms import selectors, services
from rooms.selectors import Batched


class Source:
    """A fetch that records its batches and can be held open, fail, or answer."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.fail: Exception | None = None

    async def fetch(self, keys: list[str]) -> dict[str, int]:
        self.batches.append(sorted(keys))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return {k: len(k) for k in keys if not k.startswith("missing")}


async def test_callers_meanwhile_share_one_query() -> None:
    source = Source()
    batched: Batched[str, int] = Batched(source.fetch, -1)
    first = asyncio.create_task(batched.get("a"))
    await asyncio.sleep(0)  # the first caller leads a query; the next ones wait for theirs
    rest = [asyncio.create_task(batched.get(k)) for k in ("bb", "ccc", "bb", "missing")]
    await asyncio.sleep(0)
    source.gate.set()
    async with asyncio.timeout(5):
        assert await first == 1
        assert await asyncio.gather(*rest) == [2, 3, 2, -1]
    assert source.batches == [["a"], ["bb", "ccc", "missing"]]


async def test_a_failed_query_fails_its_callers_and_not_the_next() -> None:
    source = Source()
    source.fail = RuntimeError("database gone")
    source.gate.set()
    batched: Batched[str, int] = Batched(source.fetch, -1)
    results = await asyncio.wait_for(
        asyncio.gather(batched.get("a"), batched.get("b"), return_exceptions=True), 5
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    source.fail = None
    assert await asyncio.wait_for(batched.get("abc"), 5) == 3


async def test_a_cancelled_leader_leaves_nobody_waiting() -> None:
    source = Source()
    batched: Batched[str, int] = Batched(source.fetch, -1)
    leader = asyncio.create_task(batched.get("a"))
    await asyncio.sleep(0)
    follower = asyncio.create_task(batched.get("bb"))
    joiner = asyncio.create_task(batched.get("a"))  # same key as the leader
    await asyncio.sleep(0)
    leader.cancel()  # its client went away while its query was in flight
    with pytest.raises(asyncio.CancelledError):
        await leader
    source.gate.set()
    async with asyncio.timeout(5):
        assert await follower == 2
        assert await joiner == 1


async def test_a_cancelled_follower_does_not_break_the_batch() -> None:
    source = Source()
    batched: Batched[str, int] = Batched(source.fetch, -1)
    leader = asyncio.create_task(batched.get("a"))
    await asyncio.sleep(0)
    gone = asyncio.create_task(batched.get("bb"))
    stays = asyncio.create_task(batched.get("bb"))
    await asyncio.sleep(0)
    gone.cancel()
    source.gate.set()
    async with asyncio.timeout(5):
        assert await leader == 1
        assert await stays == 2
    with pytest.raises(asyncio.CancelledError):
        await gone


@pytest.mark.django_db(transaction=True)
async def test_rooms_and_names_read_at_once_and_fresh() -> None:
    for slug in ("one", "two", "old"):
        await sync_to_async(services.room_create)(slug=slug, name=slug.title())
    old = await sync_to_async(selectors.room_get)("old")
    assert old is not None
    await sync_to_async(services.room_archive)(old)
    await sync_to_async(get_user_model().objects.create_user)("carol", password="pw-123-xyz")
    slugs = ["one", "two", "old", "nowhere"] * 10
    rooms: list[Any] = await asyncio.gather(*(selectors.room_aget(s) for s in slugs))
    assert [r and (r.slug, r.archived) for r in rooms[:4]] == [
        ("one", False),
        ("two", False),
        ("old", True),
        None,
    ]
    assert [r and r.slug for r in rooms] == [r and r.slug for r in rooms[:4]] * 10
    names = ["carol", "CAROL", "caro1", "dave", "cArOl", "erin"] * 5
    registered = await asyncio.gather(*(selectors.name_registered(n) for n in names))
    assert registered == [True, True, True, False, True, False] * 5
    # Nothing is cached: the next caller reads what is there now.
    await sync_to_async(services.room_unarchive)(old)
    again = await selectors.room_aget("old")
    assert again is not None and not again.archived
    await sync_to_async(get_user_model().objects.create_user)("dave", password="pw-123-xyz")
    assert await selectors.name_registered("dave")
