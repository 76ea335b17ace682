"""``CHANNEL_LAYERS`` from ``REDIS_URL``: the Channels layer that a project's own code uses.

Users of a Django project expect ``get_channel_layer().group_send(...)`` and their own
consumers' groups to work across every node: that is this layer's whole job. It is
channels_redis's ``RedisChannelLayer`` (the one Channels' documentation sets up), on the same
Redis as the chat, under its own key prefix. We prefer it to ``RedisPubSubChannelLayer``: a
message sent to a consumer that is busy between two ``receive`` calls waits in Redis (up to
``capacity`` and ``expiry``) instead of being dropped, and groups are kept in Redis, so they
outlive a reconnect of one node's pub/sub connection.

Chat traffic does not go through it: room events leave the room's owner once on a room
channel (``cluster/fanout.py``), each node writes the one encoded frame to every local socket,
and order, replay and back-pressure come from the room log. Through a channel layer each event
would be a message per consumer, serialised per socket, with no seq-ordered replay. The room
socket opts out (``RoomConsumer.channel_layer_alias``), so it costs the layer nothing.

``redis+cluster://`` gets no layer: channels_redis's Lua scripts touch several keys at once,
which Redis Cluster refuses across slots.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from cluster.connection import SENTINEL_SCHEMES, parse_sentinel_url

BACKEND = "channels_redis.core.RedisChannelLayer"
PREFIX = "asgi"  # channels_redis's default; the chat's own keys never start with it


def channel_layers_for(redis_url: str) -> dict[str, Any]:
    """The ``CHANNEL_LAYERS`` setting for ``redis_url``; {} (no layer) for none."""
    if not redis_url:
        return {}
    scheme = urlsplit(redis_url).scheme
    if scheme in SENTINEL_SCHEMES:
        target = parse_sentinel_url(redis_url)
        tls: dict[str, Any] = {"ssl": True, **target.tls_options} if target.tls else {}
        host: dict[str, Any] = {
            "master_name": target.master,
            "sentinels": target.sentinels,
            "sentinel_kwargs": {
                "username": target.sentinel_username,
                "password": target.sentinel_password,
                **tls,
            },
            "username": target.username,
            "password": target.password,
            "db": target.db,
            **tls,
        }
    elif scheme in ("redis", "rediss", "unix"):
        host = {"address": redis_url}
    else:
        return {}
    return {"default": {"BACKEND": BACKEND, "CONFIG": {"hosts": [host], "prefix": PREFIX}}}
