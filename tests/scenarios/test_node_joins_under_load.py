"""A node joins while rooms are busy: rooms that now prefer it move to it by hand-off, a few at
a time, and no client loses, repeats or reorders anything."""

from __future__ import annotations

import asyncio

import pytest

from cluster.placement import preferred_node
from tests.scenarios.load import Load, check_invariants, wait_until
from tests.support.client import RoamingClient
from tests.support.nodes import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def rooms_preferring(node: str, among: list[str], want: int, other: int) -> list[str]:
    mine = [f"room-{i}" for i in range(200) if preferred_node(f"room-{i}", among) == node]
    rest = [f"room-{i}" for i in range(200) if preferred_node(f"room-{i}", among) != node]
    return mine[:want] + rest[:other]


async def test_node_joins_under_load(cluster: Cluster) -> None:
    slugs = rooms_preferring("c", ["a", "b", "c"], want=3, other=3)
    for slug in slugs:
        cluster.create_room(slug)
    a, b = cluster.add("a", CHAT_RATE_LIMIT="1000/1"), cluster.add("b", CHAT_RATE_LIMIT="1000/1")
    clients = {
        slug: RoamingClient([[a, b][i % 2].ws, [b, a][i % 2].ws], slug, f"u{i}")
        for i, slug in enumerate(slugs)
    }
    for client in clients.values():
        await client.connect()
        await client.send("hello")
    for client in clients.values():
        await client.settle()
    load = Load(list(clients.values()), per_client=40, interval_s=0.05)
    sending = asyncio.create_task(load.run())
    await wait_until(lambda: sum(len(c.acks) for c in clients.values()) >= 60, timeout=20)
    c = cluster.add("c", CHAT_RATE_LIMIT="1000/1")

    def owners() -> dict[str, str]:
        return {r["slug"]: r["owner"] for r in a.get("/api/cluster/")[1]["rooms"]}

    await wait_until(lambda: sum(1 for o in owners().values() if o == "c") >= 3, timeout=20)
    await asyncio.wait_for(sending, 60)
    await load.settle(30)
    for slug, client in clients.items():
        check_invariants(c, slug, [client])
    final = owners()
    assert {slug for slug, owner in final.items() if owner == "c"} == set(slugs[:3])
    assert all(final[slug] in ("a", "b") for slug in slugs[3:])
    for client in clients.values():
        await client.close()
