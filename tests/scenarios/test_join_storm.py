"""A join storm on real nodes: 200 sockets open at once into one room, half on each node.

Presence must cost O(members) frames per batch of joins, not O(members²): each socket gets its
``presence_state`` and then diffs that each carry a window's worth of joins; and every socket's
view (its state with every diff applied) ends equal to who is really there."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.client import ChatClient, Frame
from tests.support.nodes import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

SOCKETS = 200
WINDOW_S = 0.1  # cluster.presence.WINDOW_S


def view(frames: list[Frame]) -> set[str]:
    """Who a client believes is in the room: its presence_state with every diff applied."""
    users: set[str] = set()
    for f in frames:
        if f.get("type") == "presence_state":
            users = set(f["users"])
        elif f.get("type") == "presence_diff":
            users = (users - set(f["leaves"])) | set(f["joins"])
    return users


def presence_frames(client: ChatClient) -> int:
    return sum(f.get("type") in ("presence_state", "presence_diff") for f in client.frames)


async def test_a_join_storm_costs_a_diff_per_window_not_per_join(cluster: Cluster) -> None:
    cluster.create_room("storm")
    # One test process is every client's address: let it hold them all.
    nodes = [cluster.add(name, CHAT_MAX_SOCKETS_PER_ADDRESS="1000") for name in ("a", "b")]
    clients = [ChatClient(nodes[i % 2].ws, "storm", f"u{i:03d}") for i in range(SOCKETS)]
    truth = {c.name for c in clients}
    started = time.monotonic()
    try:
        hellos = await asyncio.gather(*(c.connect(timeout=30) for c in clients))
        storm_s = time.monotonic() - started
        assert {h["type"] for h in hellos} == {"hello"}

        async def converged(client: ChatClient) -> None:
            await client.wait_for(lambda: view(client.frames) == truth, timeout=20)

        await asyncio.gather(*(converged(c) for c in clients))
        settled_s = time.monotonic() - started
        counts = sorted(presence_frames(c) for c in clients)
        total = sum(counts)
        # One diff per window at most while joins keep coming (leading edge + trailing), and
        # each node's windows are its own: a socket hears its own node's and the announced
        # ones in the same window. Before the coalescing a socket heard of every later join
        # on its own: the early ones ~SOCKETS diffs each, ~SOCKETS²/2 frames in all.
        per_socket_bound = 2 + 2 * settled_s / WINDOW_S
        assert counts[-1] <= min(per_socket_bound, SOCKETS / 4), (counts[-10:], settled_s)
        assert total <= SOCKETS * SOCKETS / 8, (total, storm_s, settled_s)
        # No diff names a user twice or both ways (a coalesced diff is a set of changes).
        for c in clients:
            for f in c.frames:
                if f.get("type") == "presence_diff":
                    assert len(set(f["joins"])) == len(f["joins"])
                    assert not set(f["joins"]) & set(f["leaves"])
        # The nodes agree with the sockets.
        for node in nodes:
            status, body = node.get("/api/rooms/")
            assert status == 200
            assert body["rooms"][0]["online"] == SOCKETS
        print(
            f"storm of {SOCKETS}: hello in {storm_s:.2f} s, converged in {settled_s:.2f} s, "
            f"presence frames {total} (max {counts[-1]} per socket)"
        )
        # Half of them leave at once: the others' views follow, again in a few diffs.
        leaving, staying = clients[::2], clients[1::2]
        before = {c.name: presence_frames(c) for c in staying}
        await asyncio.gather(*(c.close() for c in leaving))
        truth = {c.name for c in staying}
        await asyncio.gather(*(converged(c) for c in staying))
        extra = max(presence_frames(c) - before[c.name] for c in staying)
        assert extra <= SOCKETS / 8, extra
    finally:
        await asyncio.gather(
            *(c.close() for c in clients if c.ws is not None), return_exceptions=True
        )
