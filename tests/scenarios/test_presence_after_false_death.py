"""Presence after a false death (hole 6): a node frozen past CHAT_LEASE_TTL_MS (SIGSTOP) is
counted dead, and its peers delete its presence entries; when it runs again, it re-joins and
writes its presence again. Every client's view (presence_state plus diffs) comes back to the
sockets that are really open within TTL + 2 s: no ghost (a socket that closed while its node
was frozen) and nobody missing (a user still connected to the frozen node). The same after
Redis restarts without persistence and forgets every entry."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from cluster.embedded import EmbeddedRedis
from tests.scenarios.load import wait_until
from tests.support.client import ChatClient
from tests.support.nodes import Cluster, Node

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

TTL_S = 1.5  # CHAT_LEASE_TTL_MS of these nodes
MARGIN_S = 1.0  # a loaded CI machine


def view(client: ChatClient) -> list[str]:
    """Who a client believes is in the room: its presence_state with every diff applied."""
    users: set[str] = set()
    for f in client.frames:
        if f.get("type") == "presence_state":
            users = set(f["users"])
        elif f.get("type") == "presence_diff":
            users = (users - set(f["leaves"])) | set(f["joins"])
    return sorted(users)


async def converge(clients: list[ChatClient], truth: list[str], timeout: float) -> float:
    """Seconds until every client's view is ``truth`` (fails after ``timeout``)."""
    started = time.monotonic()
    try:
        await asyncio.gather(
            *(c.wait_for(lambda c=c: view(c) == truth, timeout=timeout) for c in clients)
        )
    except TimeoutError:
        views = {f"{c.name}@{c.base[-5:]}": view(c) for c in clients}
        raise AssertionError(f"no convergence to {truth} in {timeout}s: {views}") from None
    return time.monotonic() - started


async def settle(clients: list[ChatClient], truth: list[str], window: float) -> float:
    """Watch every client's view for ``window`` seconds: returns when (seconds from now) the
    views became the truth for good; fails if they are not the truth at the end. A view that
    is right for a moment and then wrong again (a flap, a ghost coming back) counts as wrong
    until it is right again."""
    started = time.monotonic()
    settled_at: float | None = None
    while time.monotonic() - started < window:
        if all(view(c) == truth for c in clients):
            if settled_at is None:
                settled_at = time.monotonic() - started
        else:
            settled_at = None
        await asyncio.sleep(0.02)
    views = {f"{c.name}@{c.base[-5:]}": view(c) for c in clients}
    assert settled_at is not None, f"not {truth} after {window}s: {views}"
    return settled_at


def online(node: Node, slug: str) -> int:
    _, rooms = node.get("/api/rooms/")
    return next(int(r["online"]) for r in rooms["rooms"] if r["slug"] == slug)


def live_nodes(node: Node) -> set[str]:
    return {n["name"] for n in node.get("/api/cluster/")[1]["nodes"]}


async def test_presence_after_sigstop_past_the_lease(cluster: Cluster) -> None:
    cluster.create_room("lobby")
    a, b = cluster.add("a"), cluster.add("b")
    alice, carl, tess_a = (ChatClient(a.ws, "lobby", n) for n in ("alice", "carl", "tess"))
    bob, dana, tess_b = (ChatClient(b.ws, "lobby", n) for n in ("bob", "dana", "tess"))
    clients = [alice, carl, tess_a, bob, dana, tess_b]
    for client in clients:
        await client.connect()
    await converge(clients, ["alice", "bob", "carl", "dana", "tess"], timeout=5)

    a.signal(signal.SIGSTOP)
    try:
        await wait_until(lambda: "a" not in live_nodes(b), timeout=TTL_S + 3)
        # The cluster counts a dead: its users leave b's sockets' views (tess stays, on b).
        await converge([bob, dana, tess_b], ["bob", "dana", "tess"], timeout=TTL_S + 2)
        # Meanwhile: carl's socket to the frozen node dies, dana leaves, erin arrives.
        assert carl.ws is not None
        carl.ws.transport.abort()
        await dana.close()
        erin = ChatClient(b.ws, "lobby", "erin")
        await erin.connect()
        await asyncio.sleep(0.5)
    finally:
        a.signal(signal.SIGCONT)
    truth = ["alice", "bob", "erin", "tess"]
    alive = [alice, tess_a, bob, tess_b, erin]
    # Watched long enough for any flap (a's repairs, b's reloads, a's heartbeats) to show.
    took = await settle(alive, truth, window=TTL_S + 2 + MARGIN_S + TTL_S)
    print(f"presence after SIGSTOP: every view is the truth for good {took:.3f}s after SIGCONT")
    assert took < TTL_S + 2, f"{took:.2f}s"
    assert "a" in live_nodes(b)
    assert online(a, "lobby") == online(b, "lobby") == 4
    late = ChatClient(a.ws, "lobby", "late")
    await late.connect()
    assert (await late.wait_frame("presence_state", timeout=5))["users"] == sorted([*truth, "late"])
    for client in [*alive, late]:
        await client.close()


async def test_presence_after_redis_restart(tmp_path: Path) -> None:
    """Redis restarts empty (no persistence) under two running nodes; a socket closes while
    it is down (its node's HDEL fails). Every view comes back to the truth."""
    redis = EmbeddedRedis.start(tmp_path / "redis", appendonly=False)
    (tmp_path / "nodes").mkdir()
    cluster = Cluster(redis.url, tmp_path / "nodes", CHAT_LEASE_TTL_MS=str(int(TTL_S * 1000)))
    try:
        cluster.create_room("lobby")
        a, b = cluster.add("a"), cluster.add("b")
        alice, carl, tess_a = (ChatClient(a.ws, "lobby", n) for n in ("alice", "carl", "tess"))
        bob, tess_b = ChatClient(b.ws, "lobby", "bob"), ChatClient(b.ws, "lobby", "tess")
        clients = [alice, carl, tess_a, bob, tess_b]
        for client in clients:
            await client.connect()
        await converge(clients, ["alice", "bob", "carl", "tess"], timeout=5)

        redis.stop()
        await carl.close()
        await asyncio.sleep(0.5)
        redis = EmbeddedRedis.start(tmp_path / "redis", port=redis.port, appendonly=False)
        truth = ["alice", "bob", "tess"]
        alive = [alice, tess_a, bob, tess_b]
        took = await settle(alive, truth, window=TTL_S + 2 + MARGIN_S + TTL_S)
        print(f"presence after a Redis restart: the truth for good {took:.3f}s after it is back")
        assert took < TTL_S + 2, f"{took:.2f}s"
        assert online(a, "lobby") == online(b, "lobby") == 3
        for client in alive:
            await client.close()
    finally:
        cluster.close()
        redis.stop()
