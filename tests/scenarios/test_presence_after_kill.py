"""Presence across the cluster after a SIGKILL: the users of a dead node leave every other
member's presence within CHAT_LEASE_TTL_MS + 2 s; a user with tabs on two nodes counts once and
stays present while one of its nodes lives; a node restarted with the same name brings no ghost
back."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.scenarios.load import wait_until
from tests.support.client import ChatClient, Frame
from tests.support.nodes import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

TTL_S = 1.5  # the cluster fixture's CHAT_LEASE_TTL_MS
MARGIN_S = 1.0  # a loaded CI machine


def presence(frames: list[Frame]) -> list[str]:
    """Who a client believes is in the room: its presence_state with every diff applied."""
    users: list[str] = []
    for f in frames:
        if f.get("type") == "presence_state":
            users = list(f["users"])
        elif f.get("type") == "presence_diff":
            users = [u for u in users if u not in f["leaves"]] + list(f["joins"])
    return sorted(users)


async def state_of(client: ChatClient) -> list[str]:
    """The presence_state that follows hello."""
    return list((await client.wait_frame("presence_state", timeout=5))["users"])


def joined_after(client: ChatClient, start: int) -> set[str]:
    return {
        u for f in client.frames[start:] if f.get("type") == "presence_diff" for u in f["joins"]
    }


async def test_presence_after_kill(cluster: Cluster) -> None:
    cluster.create_room("lobby")
    a, b = cluster.add("a"), cluster.add("b")
    alice, amy = ChatClient(a.ws, "lobby", "alice"), ChatClient(a.ws, "lobby", "amy")
    tess_a, tess_b = ChatClient(a.ws, "lobby", "tess"), ChatClient(b.ws, "lobby", "tess")
    bob = ChatClient(b.ws, "lobby", "bob")
    for client in (alice, amy, tess_a, bob, tess_b):
        assert (await client.connect())["node"] in ("a", "b")
    everyone = ["alice", "amy", "bob", "tess"]
    # bob (on b) sees the users of a; tess, with a tab on each node, counts once.
    await bob.wait_for(lambda: presence(bob.frames) == everyone, timeout=5)
    watcher = ChatClient(b.ws, "lobby", "watcher")
    await watcher.connect()
    assert await state_of(watcher) == [*everyone, "watcher"]
    status, rooms = b.get("/api/rooms/")
    assert status == 200 and rooms["rooms"][0]["online"] == 5

    start = len(bob.frames)
    a.kill()
    killed = time.monotonic()

    def left() -> bool:
        leaves = {
            u for f in bob.frames[start:] if f.get("type") == "presence_diff" for u in f["leaves"]
        }
        return {"alice", "amy"} <= leaves

    await bob.wait_for(left, timeout=TTL_S + 2 + MARGIN_S + 2)
    took = time.monotonic() - killed
    print(f"presence: the killed node's users left bob's list {took:.3f}s after SIGKILL")
    assert took < TTL_S + 2 + MARGIN_S, f"{took:.2f}s"
    # tess still has a tab on b: present all along, never in a leave.
    leaves_seen = [u for f in bob.frames[start:] if f.get("type") == "presence_diff"
                   for u in f["leaves"]]  # fmt: skip
    assert "tess" not in leaves_seen
    assert presence(bob.frames) == ["bob", "tess", "watcher"]
    # The same diff reaches tess's surviving tab (its frames may still be on their way).
    await tess_b.wait_for(lambda: presence(tess_b.frames) == ["bob", "tess", "watcher"], 2)
    late = ChatClient(b.ws, "lobby", "late")
    await late.connect()
    assert await state_of(late) == ["bob", "late", "tess", "watcher"]

    # late's join reaches the others in their node's next presence window: let it land first.
    for client in (bob, tess_b, watcher):
        await client.wait_for(lambda c=client: "late" in presence(c.frames), timeout=2)
    # The same name comes back: nothing of its former life reappears, anywhere.
    mark = {c.name: len(c.frames) for c in (bob, tess_b, watcher, late)}
    a2 = await asyncio.to_thread(cluster.add, "a")
    fresh = ChatClient(a2.ws, "lobby", "fresh")
    assert (await fresh.connect())["node"] == "a"
    assert await state_of(fresh) == ["bob", "fresh", "late", "tess", "watcher"]
    await bob.wait_for(lambda: "fresh" in presence(bob.frames), timeout=5)
    await asyncio.sleep(TTL_S)  # a ghost would come back with a's first heartbeats
    for client in (bob, tess_b, watcher, late):
        assert joined_after(client, mark[client.name]) == {"fresh"}, client.name
        assert presence(client.frames) == ["bob", "fresh", "late", "tess", "watcher"]
    _, rooms = a2.get("/api/rooms/")
    assert rooms["rooms"][0]["online"] == 5
    for client in (bob, tess_b, watcher, late, fresh):
        await client.close()


async def test_no_ghost_when_only_the_killed_node_had_the_room_open(cluster: Cluster) -> None:
    """Nobody else had the room open when its node died, so no live node cleared the dead
    node's presence entries; the node comes back under the same name (a StatefulSet pod)."""
    cluster.create_room("side")
    a, b = cluster.add("a"), cluster.add("b")
    sam = ChatClient(a.ws, "side", "sam")
    await sam.connect()
    assert await state_of(sam) == ["sam"]
    a.kill()
    # Wait until the cluster knows a is dead, then bring it back with the same name.
    await wait_until(lambda: "a" not in {n["name"] for n in b.get("/api/cluster/")[1]["nodes"]},
                     timeout=TTL_S + 3)  # fmt: skip
    late = ChatClient(b.ws, "side", "late")
    await late.connect()
    assert await state_of(late) == ["late"]
    await late.close()
    a2 = await asyncio.to_thread(cluster.add, "a")
    on_b, on_a = ChatClient(b.ws, "side", "bea"), ChatClient(a2.ws, "side", "abe")
    await on_b.connect()
    await on_a.connect()
    await asyncio.sleep(0.5)
    assert presence(on_b.frames) == ["abe", "bea"], on_b.frames
    assert presence(on_a.frames) == ["abe", "bea"], on_a.frames
    _, rooms = b.get("/api/rooms/")
    assert rooms["rooms"][0]["online"] == 2
    for client in (on_a, on_b):
        await client.close()
