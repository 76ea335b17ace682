"""SIGTERM of the owner of the busiest room while roaming clients on every node send into four
rooms: the node drains and exits 0, every client keeps every acked message once and in order,
and nobody sees an error frame (the hand-off is a delay, never an error)."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import pytest

from cluster.placement import preferred_node
from tests.scenarios.load import Load, all_events, check_invariants, wait_until
from tests.support.client import RoamingClient
from tests.support.nodes import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

NODES = ["a", "b", "c"]


def pick_rooms() -> list[str]:
    """Four rooms: two preferring ``a`` (the busiest first, so the drain hands off more than
    one room at once), one preferring ``b``, one preferring ``c``."""
    by_node: dict[str, list[str]] = {n: [] for n in NODES}
    for i in range(200):
        slug = f"room-{i}"
        by_node[preferred_node(slug, NODES) or ""].append(slug)
    return by_node["a"][:2] + by_node["b"][:1] + by_node["c"][:1]


async def test_drain_under_load(cluster: Cluster) -> None:
    slugs = pick_rooms()
    busiest = slugs[0]
    for slug in slugs:
        cluster.create_room(slug)
    nodes = [cluster.add(n, CHAT_RATE_LIMIT="1000/1") for n in NODES]
    bases = [n.ws for n in nodes]
    # The busiest room has two clients starting on every node, the others one per node; each
    # client roams to the next node of its list when its socket closes.
    clients: dict[str, list[RoamingClient]] = {}
    for r, slug in enumerate(slugs):
        per_node = 2 if slug == busiest else 1
        clients[slug] = [
            RoamingClient(bases[i:] + bases[:i], slug, f"r{r}u{i}k{k}")
            for i in range(len(nodes))
            for k in range(per_node)
        ]
    everyone = [c for group in clients.values() for c in group]
    for client in everyone:
        await client.connect()
    for group in clients.values():
        await group[0].send("hello")
        await group[0].settle()

    owners = {r["slug"]: r["owner"] for r in nodes[0].get("/api/cluster/")[1]["rooms"]}
    assert set(owners) == set(slugs)
    victim = next(n for n in nodes if n.name == owners[busiest])
    survivors = [n for n in nodes if n is not victim]
    handed_off = sorted(s for s, o in owners.items() if o == victim.name)
    on_victim = [c for c in everyone if c.current is not None and c.current.base == victim.ws]
    assert on_victim, "some clients must be connected to the drained node"

    load = Load(everyone, per_client=60, interval_s=0.04)
    sending = asyncio.create_task(load.run())
    await wait_until(lambda: sum(len(c.acks) for c in everyone) >= 150, timeout=20)
    acked_before = {s: sum(len(c.acks) for c in g) for s, g in clients.items()}
    victim.signal(signal.SIGTERM)
    assert victim.process is not None
    # Wait off the event loop: the clients must keep reading (and answer the 1012 close).
    code = await asyncio.to_thread(victim.process.wait, 30)
    await asyncio.wait_for(sending, 60)
    await load.settle(30)

    assert code == 0, victim.log()
    # The rooms kept being served after the drain: new acks in every room.
    for slug, group in clients.items():
        assert sum(len(c.acks) for c in group) > acked_before[slug] + 10, slug
    for client in on_victim:
        assert client.sockets[0].close_code == 1012, client.name
        assert len(client.sockets) >= 2, f"{client.name} never resumed"
    for slug, group in clients.items():
        events = check_invariants(survivors[0], slug, group)
        assert len(events) == sum(len(c.sent) for c in group), slug  # each command once
        # Both survivors answer the same log.
        assert all_events(survivors[1], slug) == events
    errors = Counter(f["code"] for c in everyone for f in c.errors)
    print(f"drained {victim.name} (rooms {handed_off}); error frames seen: {dict(errors)}")
    # CONTRACT 5: no client sees an error on SIGTERM (not even a retryable "unavailable").
    assert not errors, f"error frames during a drain: {dict(errors)}"
    view = survivors[0].get("/api/cluster/")[1]
    assert victim.name not in {n["name"] for n in view["nodes"]}
    assert {r["slug"]: r["owner"] for r in view["rooms"]}.keys() == set(slugs)
    assert all(r["owner"] != victim.name for r in view["rooms"])
    for client in everyone:
        await client.close()
