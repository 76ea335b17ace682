"""Guarantee 8 with the archive, on real nodes: Redis flushed under load loses nothing that
was archived; the events API and resuming sockets read every archived seq (no ``gap`` for
them), and seqs go on above everything archived."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cluster.embedded import EmbeddedRedis
from tests.scenarios.load import Load, all_events, wait_until
from tests.support.client import ChatClient, RoamingClient
from tests.support.nodes import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def volatile_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis.start(tmp_path / "redis", appendonly=False)
    try:
        yield server
    finally:
        server.stop()


def archived_upto(data_dir: Path, slug: str) -> int:
    """The nodes' database, read directly: how far the room is archived."""
    with sqlite3.connect(data_dir / "chat.sqlite3", timeout=10) as db:
        row = db.execute(
            "SELECT c.upto FROM rooms_archivecursor c JOIN rooms_room r ON r.id = c.room_id "
            "WHERE r.slug = ?",
            (slug,),
        ).fetchone()
    return int(row[0]) if row else 0


def acked(clients: list[RoamingClient]) -> dict[str, int]:
    return {cid: int(f["seq"]) for c in clients for cid, f in c.acks.items()}


async def test_flushall_under_load_loses_nothing_archived(
    volatile_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    cluster = Cluster(
        volatile_redis.url,
        tmp_path,
        CHAT_LEASE_TTL_MS="1500",
        CHAT_RATE_LIMIT="1000/1",
        CHAT_SEND_TIMEOUT_MS="3000",
        CHAT_HISTORY_LIMIT="100",  # Redis keeps ~100-200: most history is the archive's
        CHAT_ARCHIVE_LAG_S="0.3",
    )
    admin = redis.Redis(port=volatile_redis.port)
    try:
        cluster.create_room("lobby")
        a, b = cluster.add("a"), cluster.add("b")
        clients = [
            RoamingClient([a.ws, b.ws], "lobby", "ann"),
            RoamingClient([b.ws, a.ws], "lobby", "ben"),
        ]
        for client in clients:
            await client.connect()
        burst = Load(clients, per_client=200, interval_s=0.004)
        sending = asyncio.create_task(burst.run())
        await wait_until(lambda: archived_upto(tmp_path, "lobby") >= 250, 30, step=0.05)
        archived = archived_upto(tmp_path, "lobby")  # at least this much is archived now
        admin.flushall()
        await asyncio.wait_for(sending, 60)
        await burst.settle(30)
        top = max(acked(clients).values())
        assert top > archived

        # Every archived seq reads back through the API, in order, with no hole.
        events = all_events(b, "lobby")
        seqs = [int(e["seq"]) for e in events]
        assert seqs[:archived] == list(range(1, archived + 1))
        owners: dict[int, str] = {}
        for event in events:
            if event.get("client_id"):
                assert (
                    owners.setdefault(int(event["seq"]), event["client_id"]) == event["client_id"]
                )
        for cid, seq in acked(clients).items():
            if seq <= archived:
                assert owners.get(seq) == cid, (
                    f"acked {cid} at {seq}, archive says {owners.get(seq)}"
                )

        # A client resuming from the start is never told of a gap below the archived seq.
        late = ChatClient(a.ws, "lobby", "late")
        await late.connect(after=0)
        try:
            await late.wait_for(lambda: late.last_seq >= archived, 20)
        finally:
            await late.close()
        gaps = [f for f in late.frames if f.get("type") == "gap"]
        assert all(int(f["first_available"]) > archived for f in gaps), gaps[:3]
        got = [int(f["seq"]) for f in late.durable if int(f["seq"]) <= archived]
        assert got == list(range(1, archived + 1))
        for client in clients:
            await client.close()
    finally:
        admin.close()
        cluster.close()
