"""Five drains in a row on a three-node cluster under continuous sending: each time the room's
current owner is SIGTERMed and a replacement with a fresh name joins. Every drain exits 0, the
room is served again after each, and at the end every client kept every acked message once and
in order."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import pytest

from tests.scenarios.load import check_invariants, wait_until
from tests.support.client import RoamingClient
from tests.support.nodes import Cluster, Node

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

ROOM = "lobby"
DRAINS = 5


async def keep_sending(client: RoamingClient, stop: asyncio.Event, interval_s: float) -> None:
    i = 0
    while not stop.is_set():
        await client.send(f"{client.name} #{i}")
        i += 1
        await asyncio.sleep(interval_s)


def owner_of(node: Node, slug: str) -> str | None:
    rooms = node.get("/api/cluster/")[1]["rooms"]
    return next((r["owner"] for r in rooms if r["slug"] == slug), None)


async def test_five_drains_in_a_row(cluster: Cluster) -> None:
    started = time.monotonic()
    cluster.create_room(ROOM)
    live = [cluster.add(n, CHAT_RATE_LIMIT="1000/1") for n in ("a", "b", "c")]
    bases = [n.ws for n in live]
    clients = [RoamingClient(bases[i % 3 :] + bases[: i % 3], ROOM, f"user{i}") for i in range(4)]
    for client in clients:
        await client.connect()
    await clients[0].send("hello")
    await clients[0].settle()

    stop = asyncio.Event()
    sending = [asyncio.create_task(keep_sending(c, stop, 0.06)) for c in clients]
    drained: list[tuple[str, int, float]] = []
    try:
        for round_ in range(DRAINS):
            await wait_until(lambda: sum(len(c.acks) for c in clients) >= 20, timeout=15)
            owner_name = owner_of(live[0], ROOM)
            assert owner_name is not None, f"round {round_}: nobody owns {ROOM}"
            victim = next(n for n in live if n.name == owner_name)
            acked = sum(len(c.acks) for c in clients)
            t0 = time.monotonic()
            victim.signal(signal.SIGTERM)
            assert victim.process is not None
            code = await asyncio.to_thread(victim.process.wait, 30)
            drained.append((victim.name, code, time.monotonic() - t0))
            assert code == 0, victim.log()
            live.remove(victim)
            # The room answers again before the replacement arrives ...
            await wait_until(lambda a=acked: sum(len(c.acks) for c in clients) > a + 8, 10)
            fresh = await asyncio.to_thread(cluster.add, f"n{round_ + 4}", CHAT_RATE_LIMIT="1000/1")
            live.append(fresh)
            for client in clients:
                client.bases.append(fresh.ws)
    finally:
        stop.set()
        await asyncio.gather(*sending)
    await asyncio.gather(*(c.settle(30) for c in clients))

    print(f"drains (node, exit code, seconds to exit): {drained}")
    events = check_invariants(live[0], ROOM, clients)
    assert len(events) == sum(len(c.sent) for c in clients)  # every command applied once
    assert [code for _, code, _ in drained] == [0] * DRAINS
    errors = Counter(f["code"] for c in clients for f in c.errors)
    assert not errors, f"error frames during drains: {dict(errors)}"
    view = live[0].get("/api/cluster/")[1]
    assert sorted(n["name"] for n in view["nodes"]) == sorted(n.name for n in live)
    assert owner_of(live[0], ROOM) in {n.name for n in live}
    for client in clients:
        await client.close()
    assert time.monotonic() - started < 90
