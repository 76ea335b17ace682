"""The project's Channels layer (chatsite/channel_layers.py): configured from REDIS_URL, shared
by every node, and not used by the room sockets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import websockets
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.test import override_settings

from chatsite.channel_layers import BACKEND, channel_layers_for
from rooms.consumers import RoomConsumer
from tests.support.nodes import Cluster


def test_layer_settings_from_each_redis_url_form() -> None:
    assert channel_layers_for("") == {}
    plain = channel_layers_for("redis://:pw@r1:6379/2")["default"]
    assert plain["BACKEND"] == BACKEND
    assert plain["CONFIG"]["hosts"] == [{"address": "redis://:pw@r1:6379/2"}]
    tls = channel_layers_for("rediss://r1:6380/0")["default"]["CONFIG"]["hosts"]
    assert tls == [{"address": "rediss://r1:6380/0"}]
    sentinel = channel_layers_for("redis+sentinel://:pw@s1:26379,s2:26379/mymaster/3")
    (host,) = sentinel["default"]["CONFIG"]["hosts"]
    assert host["master_name"] == "mymaster" and host["db"] == 3 and host["password"] == "pw"
    assert host["sentinels"] == [("s1", 26379), ("s2", 26379)]
    # Redis Cluster: channels_redis's multi-key scripts cannot run there; no layer.
    assert channel_layers_for("redis+cluster://c1:7000,c2:7000/") == {}


def test_room_sockets_use_no_channel_layer(redis_url: str) -> None:
    with override_settings(CHANNEL_LAYERS=channel_layers_for(redis_url)):
        assert isinstance(get_channel_layer(), RedisChannelLayer)
        assert get_channel_layer(RoomConsumer.channel_layer_alias) is None


async def _probe(base: str) -> websockets.ClientConnection:
    ws = await asyncio.wait_for(websockets.connect(f"{base}/ws/probe/"), 10)
    ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert ready["type"] == "ready"
    return ws


async def _said(ws: websockets.ClientConnection) -> dict[str, str]:
    frame: dict[str, str] = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert frame["type"] == "said"
    return frame


@pytest.mark.cluster
async def test_group_send_crosses_nodes_and_processes(redis_url: str, tmp_path: Path) -> None:
    """A consumer's group_send on node b reaches a consumer on node a; a process that runs no
    node (a task worker) reaches both through the same settings."""
    cluster = Cluster(redis_url, tmp_path, DJANGO_SETTINGS_MODULE="tests.support.layer_settings")
    try:
        a, b = cluster.add("a"), cluster.add("b")
        on_a, on_b = await _probe(a.ws), await _probe(b.ws)
        await on_b.send(json.dumps({"say": "hello from b"}))
        assert await _said(on_a) == {"type": "said", "text": "hello from b", "from": "b"}
        assert await _said(on_b) == {"type": "said", "text": "hello from b", "from": "b"}

        layer = RedisChannelLayer(**channel_layers_for(redis_url)["default"]["CONFIG"])
        try:
            await layer.group_send("probe", {"type": "probe.said", "text": "x", "from": "worker"})
        finally:
            await layer.close_pools()
        for ws in (on_a, on_b):
            assert await _said(ws) == {"type": "said", "text": "x", "from": "worker"}
        await on_a.close()
        await on_b.close()
    finally:
        cluster.close()
