"""The HTTP API and operational endpoints of CONTRACT.md, on one node with a real Redis."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from cluster.commands import Command
from rooms import services

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def test_healthz_and_readyz(runtime: Any) -> None:
    client = AsyncClient()
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "node": "test-node"}
    assert (await client.get("/readyz")).status_code == 200
    runtime.state = "draining"
    try:
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
    finally:
        runtime.state = "running"


async def test_probes_answer_requests_addressed_to_a_pod_ip(runtime: Any) -> None:
    # /metrics addressed to a pod IP needs the ops token: tests/rooms/test_ops_endpoints.py
    client = AsyncClient(headers={"host": "10.1.2.3:8000"})
    for path in ("/healthz", "/readyz"):
        assert (await client.get(path)).status_code == 200, path


async def test_readyz_503_without_runtime() -> None:
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 503


async def test_rooms_list_with_owner_and_online(runtime: Any) -> None:
    await sync_to_async(services.room_create)(slug="b-room", name="B")
    await sync_to_async(services.room_create)(slug="a-room", name="A")
    old, _ = await sync_to_async(services.room_create)(slug="old", name="Old")
    await sync_to_async(services.room_archive)(old)
    await runtime.submit("a-room", Command("send", "u", "c", body="hi"))
    body = (await AsyncClient().get("/api/rooms/")).json()
    assert body == {
        "rooms": [
            {"slug": "a-room", "name": "A", "owner": "test-node", "online": 0},
            {"slug": "b-room", "name": "B", "owner": None, "online": 0},
        ],
        "next": None,  # paginated (issue 9): the next page's number
    }


async def test_events_api_pages_and_validates(runtime: Any) -> None:
    await sync_to_async(services.room_create)(slug="lobby")
    for i in range(5):
        await runtime.submit("lobby", Command("send", "u", f"c{i}", body=f"m{i}"))
    client = AsyncClient()
    page = (await client.get("/api/rooms/lobby/events?after=1&limit=2")).json()
    assert page["room"] == "lobby" and page["last_seq"] == 5
    assert [e["seq"] for e in page["events"]] == [2, 3]
    assert page["events"][0] == {
        "type": "message", "room": "lobby", "seq": 2, "id": "m2", "user": "u", "body": "m1",
        "ts": page["events"][0]["ts"], "client_id": "c1", "author": "n:u",
    }  # fmt: skip
    everything = (await client.get("/api/rooms/lobby/events")).json()
    assert [e["seq"] for e in everything["events"]] == [1, 2, 3, 4, 5]
    assert (await client.get("/api/rooms/nope/events")).status_code == 404
    for bad in ("after=-1", "after=x", "limit=0", "limit=many"):
        response = await client.get(f"/api/rooms/lobby/events?{bad}")
        assert response.status_code == 400, bad
        assert response.json()["error"] == "bad_request"


async def test_cluster_view_lists_node_and_owned_rooms(runtime: Any) -> None:
    await runtime.submit("lobby", Command("send", "u", "c", body="hi"))
    view = (await AsyncClient().get("/api/cluster/")).json()
    assert view["node"] == "test-node"
    assert [n["name"] for n in view["nodes"]] == ["test-node"]
    node = view["nodes"][0]
    assert node["state"] == "up" and set(node) == {
        "name", "state", "rooms", "connections", "last_seen_ms",
    }  # fmt: skip
    assert view["rooms"] == [{"slug": "lobby", "owner": "test-node", "epoch": 1}]


async def test_metrics_are_prometheus_text(runtime: Any) -> None:
    await runtime.submit("lobby", Command("send", "u", "c", body="hi"))
    response = await AsyncClient().get("/metrics")
    assert response.status_code == 200
    assert response["content-type"].startswith("text/plain")
    text = response.content.decode()
    assert "chat_node_ready 1.0" in text
    assert "chat_rooms_owned 1.0" in text
