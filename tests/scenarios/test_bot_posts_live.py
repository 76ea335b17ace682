"""A bot posts over HTTP to one node; a socket on another node sees it live. On SQLite and on
PostgreSQL (tests/support/pg_plugin.py), with real runnode processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import ChatClient
from tests.support.nodes import Cluster, manage

DOCS = Path(__file__).resolve().parents[2] / "docs" / "bots.md"
pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def post(base: str, slug: str, data: Any, token: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{base}/api/rooms/{slug}/messages",
        data=json.dumps(data).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_bot_message_reaches_a_socket_on_another_node(
    redis_url: str, tmp_path: Path, database_url: str
) -> None:
    cluster = Cluster(redis_url, tmp_path, database_url=database_url, CHAT_LEASE_TTL_MS="1500")
    try:
        cluster.create_room("ops")
        cluster.create_room("private")
        token = manage("createbottoken", "deploy-bot", "--room", "ops", env=cluster.env).strip()
        a, b = cluster.add("a"), cluster.add("b")
        watcher = ChatClient(b.ws, "ops", "watcher")
        await watcher.connect()
        sent = {"body": "v2 deployed", "client_id": "deploy-42"}
        status, ack = await asyncio.to_thread(post, a.http, "ops", sent, token)
        assert status == 201, ack
        assert ack == {"seq": 1, "id": "m1", "client_id": "deploy-42"}
        await watcher.wait_for(lambda: len(watcher.durable) == 1)
        live = watcher.durable[0]
        assert (live["user"], live["body"], live["seq"]) == ("deploy-bot", "v2 deployed", 1)
        assert live["author"].startswith("b:") and live["client_id"] == "deploy-42"
        # The same post again, to the other node: the same ack, no second message.
        status, again = await asyncio.to_thread(post, b.http, "ops", sent, token)
        assert (status, again) == (200, ack)
        status, refused = await asyncio.to_thread(post, b.http, "private", sent, token)
        assert status == 403 and refused["code"] == "forbidden"
        status, then = await asyncio.to_thread(
            post, b.http, "ops", {"body": "and then", "client_id": "deploy-43"}, token
        )
        assert status == 201 and then["seq"] == 2
        await watcher.wait_for(lambda: len(watcher.durable) == 2)
        assert [f["seq"] for f in watcher.durable] == [1, 2]
        # The Python example of docs/bots.md, as printed there.
        example = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)[0]
        scope: dict[str, Any] = {}
        exec(compile(example, "docs/bots.md", "exec"), scope)
        os.environ["CHAT_BOT_TOKEN"] = token
        try:
            from_docs = await asyncio.to_thread(
                scope["post"], "ops", "from the docs", "doc-1", a.http
            )
        finally:
            del os.environ["CHAT_BOT_TOKEN"]
        assert from_docs == {"seq": 3, "id": "m3", "client_id": "doc-1"}
        await watcher.wait_for(lambda: len(watcher.durable) == 3)
        await watcher.close()
    finally:
        cluster.close()


def test_migrations_are_complete_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    """``migrate`` runs on PostgreSQL, and the models need no migration it lacks."""
    from tests.support.nodes import base_env

    env = base_env("redis://127.0.0.1:1/0", tmp_path, DATABASE_URL=postgres_url)
    manage("migrate", "--noinput", env=env)
    out = manage("makemigrations", "--check", "--dry-run", env=env)
    assert "No changes detected" in out
    manage("createroom", "lobby", env=env)
    token = manage("createbottoken", "pg-bot", "--all-rooms", env=env).strip()
    assert token.startswith("chatbot_")
