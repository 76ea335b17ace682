"""Room state moves with the room: a drained or killed owner's successor rebuilds exactly the
state it had (digests compared), and commands during a hand-off are forwarded, not lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cluster.commands import Command
from cluster.config import ClusterConfig
from cluster.errors import CommandError
from cluster.runtime import ClusterRuntime

pytestmark = pytest.mark.asyncio

TTL_MS = 900


def runtime(name: str, url: str) -> ClusterRuntime:
    config = ClusterConfig(name, lease_ttl_ms=TTL_MS, rate_limit=(10_000, 1.0), state_window=50)
    return ClusterRuntime(config, url)


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[ClusterRuntime, ClusterRuntime]]:
    a, b = runtime("a", redis_url), runtime("b", redis_url)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        for rt in (a, b):
            if rt.state != "stopped":
                await rt.stop()


async def crash(rt: ClusterRuntime) -> None:
    """What SIGKILL leaves behind: no drain, no release, no goodbye, no last snapshot."""
    rt.state = "stopped"
    await rt.membership._tasks.stop()
    await rt.supervisor._tasks.stop()
    for server in rt.supervisor.servers.values():
        if server.task is not None:
            server.task.cancel()
    await rt.hub.stop()
    await rt.redis.aclose()


async def busy_room(owner: ClusterRuntime, slug: str, n: int = 120) -> None:
    """Sends, edits and deletes: more than the window and than one snapshot interval."""
    for i in range(n):
        await owner.submit(slug, Command("send", f"u{i % 3}", f"s{i}", body=f"hello {i}"))
    for i in range(0, n, 7):
        await owner.submit(
            slug, Command("edit", f"u{i % 3}", f"e{i}", body=f"edited {i}", id=f"m{i + 1}")
        )
    for i in range(0, n, 11):
        await owner.submit(slug, Command("delete", f"u{i % 3}", f"d{i}", id=f"m{i + 1}"))


async def test_drain_hands_state_to_successor(pair: tuple[ClusterRuntime, ClusterRuntime]) -> None:
    a, b = pair
    await a.supervisor.activate("room")
    await busy_room(a, "room")
    old = a.supervisor.servers["room"]
    await a.drain()
    server = b.supervisor.get("room")
    assert server is not None, "the successor claimed at once, without waiting for expiry"
    # The old owner compacted its state into the snapshot it flushed; the successor has that.
    assert server.state.digest() == old.state.digest()
    # The window is the last 50 seqs of the log: messages 100..120 (edits and deletes follow).
    assert server.state.map.keys("msg:") == sorted(f"msg:m{i}" for i in range(100, 121))
    assert server.lease.epoch == 2
    ack = await b.submit("room", Command("send", "u0", "after", body="after the drain"))
    assert ack.seq == server.last_seq


async def test_killed_owner_state_is_rebuilt_exactly(
    pair: tuple[ClusterRuntime, ClusterRuntime],
) -> None:
    a, b = pair
    await a.supervisor.activate("room")
    await busy_room(a, "room")
    before = a.supervisor.servers["room"].state.digest()
    last = a.supervisor.servers["room"].last_seq
    await crash(a)
    async with asyncio.timeout(TTL_MS / 1000 + 3):
        while b.supervisor.get("room") is None:
            await asyncio.sleep(0.02)
    server = b.supervisor.get("room")
    assert server is not None and server.last_seq == last
    assert server.state.digest() == before
    # The rebuilt state still knows who wrote what and what was deleted.
    with pytest.raises(CommandError) as refused:
        await b.submit("room", Command("edit", "u1", "x", body="not mine", id="m120"))
    assert refused.value.code == "forbidden"
    with pytest.raises(CommandError) as gone:
        await b.submit("room", Command("edit", "u0", "y", body="undelete?", id="m1"))
    assert gone.value.code == "not_found"


async def test_commands_during_a_drain_reach_the_new_owner(
    pair: tuple[ClusterRuntime, ClusterRuntime],
) -> None:
    a, b = pair
    await a.supervisor.activate("room")

    async def keep_sending() -> list[int]:
        seqs = []
        for i in range(60):
            ack = await b.submit("room", Command("send", "u", f"c{i}", body=str(i)))
            seqs.append(ack.seq)
            await asyncio.sleep(0.002)
        return seqs

    sending = asyncio.create_task(keep_sending())
    await asyncio.sleep(0.05)
    await a.drain()
    seqs = await sending
    assert seqs == list(range(1, 61))
    page = await b.events("room", after=0, limit=100)
    assert [e["seq"] for e in page.events] == seqs


async def test_edit_after_delete_never_resurrects(
    pair: tuple[ClusterRuntime, ClusterRuntime],
) -> None:
    a, _ = pair
    await a.supervisor.activate("room")
    await a.submit("room", Command("send", "u", "s", body="secret"))
    await a.submit("room", Command("delete", "u", "d", id="m1"))
    with pytest.raises(CommandError):
        await a.submit("room", Command("edit", "u", "e", body="back?", id="m1"))
    state = a.supervisor.servers["room"].state
    expected = {"user": "u", "body": "secret", "seq": 1, "author": "n:u", "deleted": True}
    assert state.message("m1") == expected  # author: who may change it (issue 9)


async def test_admin_move_hands_the_room_off(pair: tuple[ClusterRuntime, ClusterRuntime]) -> None:
    import json

    from cluster import keys

    a, b = pair
    await a.supervisor.activate("room")
    await busy_room(a, "room", n=30)
    old = a.supervisor.servers["room"]
    await a.redis.publish(keys.CLUSTER_CHANNEL, json.dumps({"op": "move", "room": "room"}))
    async with asyncio.timeout(5):
        while b.supervisor.get("room") is None:
            await asyncio.sleep(0.01)
    server = b.supervisor.get("room")
    assert server is not None and "room" not in a.supervisor.servers
    assert server.state.digest() == old.state.digest()


async def test_planned_handoff_skips_the_database_unless_redis_lost_the_reservation(
    redis_url: str,
) -> None:
    from cluster.runtime import RuntimeHooks

    database: dict[str, int] = {}
    asked: list[str] = []

    async def seq_floor(slug: str) -> int:
        asked.append(slug)
        return database.get(slug, 0)

    async def checkpoint(slug: str, seq: int) -> None:
        database[slug] = max(database.get(slug, 0), seq)

    hooks = RuntimeHooks(seq_floor=seq_floor, checkpoint=checkpoint)
    config = ClusterConfig("a", lease_ttl_ms=TTL_MS, rate_limit=(10_000, 1.0))
    a = ClusterRuntime(config, redis_url, hooks)
    b = ClusterRuntime(
        ClusterConfig("b", lease_ttl_ms=TTL_MS, rate_limit=(10_000, 1.0)), redis_url, hooks
    )
    await a.start()
    await b.start()
    try:
        await a.supervisor.activate("room")
        await a.submit("room", Command("send", "u", "c1", body="x"))
        asked.clear()
        await a.supervisor.handoff("room", "b")
        assert b.supervisor.get("room") is not None and asked == []
        await b.redis.delete("chat:{room:room}:reserved")  # Redis lost it since
        await b.supervisor.handoff("room", "a")
        assert a.supervisor.get("room") is not None and asked == ["room"]
        ack = await a.submit("room", Command("send", "u", "c2", body="y"))
        assert ack.seq > database["room"] - 100  # continues above the database's reservation
    finally:
        await a.stop()
        await b.stop()
