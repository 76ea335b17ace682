"""Two real nodes on one Redis: people on different nodes chat in one room."""

from __future__ import annotations

import asyncio

import pytest
import websockets

from tests.scenarios.invariants import assert_acked_once_in_log, assert_log_is_gapless
from tests.support.client import ChatClient
from tests.support.nodes import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


async def test_clients_on_two_nodes_see_the_same_ordered_room(cluster: Cluster) -> None:
    cluster.create_room("lobby")
    a, b = cluster.add("a"), cluster.add("b")
    alice = ChatClient(a.ws, "lobby", "alice")
    bob = ChatClient(b.ws, "lobby", "bob")
    assert (await alice.connect())["node"] == "a"
    assert (await bob.connect())["node"] == "b"
    await alice.wait_for(lambda: any(
        f.get("type") == "presence_diff" and "bob" in f["joins"] for f in alice.frames
    ))  # fmt: skip
    for i in range(10):
        await alice.send(f"alice {i}")
        await bob.send(f"bob {i}")
    for client in (alice, bob):
        await client.wait_for(lambda c=client: len(c.durable) == 20 and len(c.acks) == 10)
    assert [f["seq"] for f in alice.durable] == list(range(1, 21))
    assert [f["body"] for f in alice.durable] == [f["body"] for f in bob.durable]
    status, page = a.get("/api/rooms/lobby/events?after=0")
    assert status == 200
    assert_log_is_gapless(page["events"])
    assert page["events"] == b.get("/api/rooms/lobby/events?after=0")[1]["events"]
    assert page["events"] == alice.durable
    assert_acked_once_in_log(alice.acks, page["events"], "alice")
    assert_acked_once_in_log(bob.acks, page["events"], "bob")

    status, view = b.get("/api/cluster/")
    assert status == 200 and {n["name"] for n in view["nodes"]} == {"a", "b"}
    assert [r["slug"] for r in view["rooms"]] == ["lobby"]
    owner = view["rooms"][0]["owner"]
    assert owner in ("a", "b")
    rooms = a.get("/api/rooms/")[1]["rooms"]
    assert rooms == [{"slug": "lobby", "name": "lobby", "owner": owner, "online": 2}]
    await alice.close()
    await bob.close()


async def test_foreign_origin_gets_http_403(cluster: Cluster) -> None:
    cluster.create_room("lobby")
    a = cluster.add("a")
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(f"{a.ws}/ws/rooms/lobby/?name=x", origin="http://evil.example")
    assert refused.value.response.status_code == 403


async def test_sigterm_exits_zero_and_clients_get_1012(cluster: Cluster) -> None:
    cluster.create_room("lobby")
    a, b = cluster.add("a"), cluster.add("b")
    alice = ChatClient(a.ws, "lobby", "alice")
    await alice.connect()
    await alice.send("before")
    await alice.wait_for(lambda: len(alice.acks) == 1)
    assert a.terminate(timeout=30) == 0
    await alice.wait_for(lambda: not alice.connected)
    assert alice.close_code == 1012
    again = ChatClient(b.ws, "lobby", "alice")
    await again.connect(after=alice.last_seq)
    await again.send("after")
    await again.wait_for(lambda: len(again.acks) == 1, timeout=10)
    assert again.acks and next(iter(again.acks.values()))["seq"] == 2
    await asyncio.wait_for(again.close(), 5)
