"""Logs (issue 12 item 4): with ``CHAT_LOG_JSON=1`` a real node writes one JSON object per line,
with its node name on every line, connection and room ids where known, one line per cluster
event and an access-log line per HTTP request and per socket (with its close code)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.support.client import ChatClient
from tests.support.nodes import Cluster, Node


@pytest.fixture(scope="module")
def node(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    cluster = Cluster(redis_server, Path(tmp_path_factory.mktemp("logs")), CHAT_LOG_JSON="1")
    cluster.create_room("logged")
    try:
        yield cluster.add("log-node")
    finally:
        cluster.close()


def records(node: Node) -> list[dict[str, Any]]:
    assert node.log_path is not None
    lines = node.log_path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def wait_for_record(node: Node, match: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for record in records(node):
            if all(record.get(k) == v for k, v in match.items()):
                return record
        if time.monotonic() > deadline:
            raise AssertionError(f"no log record with {match}:\n{node.log()}")
        time.sleep(0.1)


def test_every_line_is_json_with_the_node_name(node: Node) -> None:
    logged = records(node)  # every line of its output parses, the start-up banner too
    assert any(r["message"].startswith("node log-node serving on") for r in logged), logged
    for record in logged:
        assert record["node"] == "log-node"
        assert {"time", "level", "logger", "message"} <= set(record)


def test_a_cluster_event_is_one_line_with_its_fields(node: Node) -> None:
    joined = wait_for_record(node, {"event": "node_joined"})
    assert joined["logger"] == "cluster.runtime" and joined["live_nodes"] >= 1


def test_http_requests_have_an_access_line(node: Node) -> None:
    with urllib.request.urlopen(f"{node.http}/api/rooms/?secret=dont-log-me", timeout=10) as r:
        assert r.status == 200
    line = wait_for_record(node, {"event": "http_request", "path": "/api/rooms/"})
    assert line["status"] == 200 and line["method"] == "GET"
    assert line["conn"] and line["duration_ms"] >= 0
    assert "dont-log-me" not in json.dumps(records(node))


async def test_a_socket_logs_its_open_and_close_with_room_and_conn(node: Node) -> None:
    client = ChatClient(node.ws, "logged", "dana")
    await client.connect()
    await client.send("hi")
    await client.wait_for(lambda: len(client.acks) == 1)
    await client.close()
    closed = wait_for_record(node, {"event": "websocket_close", "room": "logged"})
    assert closed["code"] == 1000 and closed["closed_by"] == "client"
    opened = wait_for_record(node, {"event": "websocket_open", "conn": closed["conn"]})
    assert opened["path"] == "/ws/rooms/logged/"
    # A claim of the room, logged while serving this socket's command, carries its ids too.
    claimed = wait_for_record(node, {"event": "room_claimed", "room": "logged"})
    assert claimed["node"] == "log-node"


async def test_a_refused_socket_logs_its_close_code(node: Node) -> None:
    async with websockets.connect(f"{node.ws}/ws/rooms/no-such-room/?name=erin") as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    closed = wait_for_record(node, {"event": "websocket_close", "room": "no-such-room"})
    assert closed["code"] == 4404 and closed["closed_by"] == "server"


def test_a_probe_503_is_not_logged_as_a_django_error() -> None:
    import logging
    from types import SimpleNamespace

    from chatsite.logs import QuietProbes

    def record(path: str) -> logging.LogRecord:
        made = logging.LogRecord("django.request", logging.ERROR, "", 0, "x", None, None)
        made.request = SimpleNamespace(path=path)
        return made

    assert not QuietProbes().filter(record("/readyz"))
    assert QuietProbes().filter(record("/api/rooms/"))
