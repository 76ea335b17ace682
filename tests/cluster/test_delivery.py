"""Delivery to this node's sockets: one subscription per room, whatever the attach/detach
interleaving; every attached listener gets every event, in seq order, even across a Redis error
in the middle of a hole fill; a drain asks sockets to close instead of sending them a frame."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cluster.commands import Command
from cluster.config import ClusterConfig
from cluster.runtime import ClusterRuntime
from tests.support.tab import Tab

pytestmark = pytest.mark.asyncio


class Broken(Tab):
    """A listener whose deliver fails: it must cost nobody else an event."""

    def deliver(self, frame: dict[str, Any]) -> None:
        raise RuntimeError("a broken socket")


@pytest.fixture
async def rt(redis_url: str) -> AsyncIterator[ClusterRuntime]:
    runtime = ClusterRuntime(
        ClusterConfig("a", lease_ttl_ms=900, rate_limit=(10_000, 1.0)), redis_url
    )
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


async def send(rt: ClusterRuntime, body: str) -> int:
    return (await rt.submit("room", Command("send", "sender", body, body=body))).seq


async def wait_for_seq(tabs: list[Tab], seq: int, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while any(seq not in t.seqs for t in tabs):
            await asyncio.sleep(0.01)


async def test_racing_attach_and_detach_leaves_one_fed_room(rt: ClusterRuntime) -> None:
    """Hole 7: the per-room lock was dropped while held, so an attach racing a detach that
    closed the room could open a second room object, one of them never fed."""
    await send(rt, "warm-up")  # the room has an owner before the race
    rng = random.Random(7)
    attached: list[Tab] = []

    # The exact interleaving first: a detach closes the room while one attach waits for the
    # room's lock and another arrives the moment the detach is done.
    last = Tab("last")
    await rt.attach("room", last)
    closing = asyncio.create_task(rt.detach("room", last))
    await asyncio.sleep(0)  # the detach holds the lock and awaits Redis
    waiting = Tab("waiting")
    waiter = asyncio.create_task(rt.attach("room", waiting))
    await asyncio.sleep(0)  # the attach waits for the lock
    await closing
    arriving = Tab("arriving")
    await asyncio.wait_for(rt.attach("room", arriving), 5)
    await asyncio.wait_for(waiter, 5)
    attached += [waiting, arriving]
    assert len(rt.fanout.rooms) == 1
    assert rt.fanout.connections == 2
    seq = await send(rt, "after the interleaving")
    await wait_for_seq(attached, seq)

    async def yields(n: int) -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    async def attach(tab: Tab) -> None:
        await yields(rng.randrange(8))
        await rt.attach("room", tab)
        attached.append(tab)

    async def detach(tab: Tab) -> None:
        await yields(rng.randrange(8))
        attached.remove(tab)
        await rt.detach("room", tab)

    # Rounds in which the room empties (and closes) while attaches wait or arrive.
    for i in range(80):
        ops = [detach(t) for t in list(attached)]
        ops += [attach(Tab(f"u{i}-{k}")) for k in range(rng.randrange(1, 4))]
        rng.shuffle(ops)
        await asyncio.wait_for(asyncio.gather(*ops), 10)
        assert len(rt.fanout.rooms) == 1, i
        assert rt.fanout.connections == len(attached), i
    seq = await send(rt, "after the race")
    await wait_for_seq(attached, seq)
    # Nothing is left behind by the churn: detach everyone and the room goes.
    for tab in list(attached):
        await rt.detach("room", tab)
    assert rt.fanout.rooms == {} and rt.fanout.connections == 0


async def test_a_broken_listener_costs_nobody_an_event(rt: ClusterRuntime) -> None:
    good, broken, late = Tab("good"), Broken("broken"), Tab("late")
    await rt.attach("room", broken)
    await rt.attach("room", good)
    await rt.attach("room", late)
    seqs = [await send(rt, f"m{i}") for i in range(5)]
    await wait_for_seq([good, late], seqs[-1])
    assert good.seqs == seqs and late.seqs == seqs


async def test_a_failed_fill_is_retried_from_the_log(rt: ClusterRuntime) -> None:
    """Pub/sub drops events (its connection killed); the fill from the log fails (XRANGE
    refused by Redis, for real) for a while: delivery backs off and retries, never stops."""
    tab = Tab("reader")
    first = await send(rt, "before")
    await rt.attach("room", tab)
    reconnects = rt.hub.reconnects
    await rt.redis.execute_command("ACL", "SETUSER", "default", "-xrange")
    try:
        await rt.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        seqs = [await send(rt, f"lost {i}") for i in range(3)]
        async with asyncio.timeout(5):
            while rt.hub.reconnects == reconnects:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # fills fail meanwhile
        assert tab.seqs == []
    finally:
        await rt.redis.execute_command("ACL", "SETUSER", "default", "+xrange")
    await wait_for_seq([tab], seqs[-1])
    more = await send(rt, "after")
    await wait_for_seq([tab], more)
    assert tab.seqs == [*seqs, more] and first < seqs[0]


async def test_close_all_asks_each_socket_to_close(rt: ClusterRuntime) -> None:
    tabs = [Tab("ann"), Tab("bob")]
    for tab in tabs:
        await rt.attach("room", tab)
    rt.fanout.close_all(1012)
    assert [t.close_codes for t in tabs] == [[1012], [1012]]
    assert not [f for t in tabs for f in t.frames if f.get("type") == "_close"]


async def test_a_cancelled_attach_leaves_nothing_behind(rt: ClusterRuntime) -> None:
    """The socket went away while its attach was under way (cancelled at each of its awaits
    in turn): no listener, no subscription and no presence may outlive it."""
    for k in range(12):
        tab = Tab(f"gone{k}")
        task = asyncio.create_task(rt.attach("room", tab))
        for _ in range(k):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if task.cancelled():
            assert rt.fanout.connections == 0, k
            assert rt.fanout.rooms == {}, k
        else:
            await rt.detach("room", tab)
    async with asyncio.timeout(5):
        while (await rt.online(["room"]))["room"] or await rt.redis.hlen(
            "chat:{room:room}:presence"
        ):
            await asyncio.sleep(0.02)
