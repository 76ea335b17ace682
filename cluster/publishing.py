"""Which command publishes a room's events on the configured Redis.

- One Redis, Sentinel, or a Redis Cluster 6.2: classic ``PUBLISH``. A cluster broadcasts a
  classic publish to every shard over its bus, so a subscriber on any node hears it.
- A Redis Cluster 7 or newer: ``SPUBLISH`` (sharded pub/sub). A room's channel carries the
  room's hash tag (``chat:{room:SLUG}:events``), so the message stays on the shard that holds
  the room (its master and replicas) instead of crossing the whole cluster bus; it is legal
  inside the append script because the channel hashes to the script's slot.

Cluster-wide channels (announcements, node RPC) stay classic everywhere: every node must hear
them, and they are rare next to room traffic.

The answer depends on the server, so it is asked once per client (``room_publish_command``)
and cached with it. Subscribers must agree with publishers: the hub asks the same question.
"""

from __future__ import annotations

import weakref
from typing import Any

from redis.asyncio.cluster import RedisCluster

PUBLISH = "PUBLISH"
SPUBLISH = "SPUBLISH"
SHARDED_SINCE = (7, 0, 0)

_answers: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in str(text).split(".")[:3] if part.isdigit())


async def room_publish_command(redis: Any) -> str:
    """``SPUBLISH`` on a Redis Cluster whose every master runs 7+, else ``PUBLISH``."""
    known = _answers.get(redis)
    if known is not None:
        return known
    command = PUBLISH
    if isinstance(redis, RedisCluster):
        await redis.initialize()
        infos = await redis.execute_command("INFO", "server", target_nodes=RedisCluster.PRIMARIES)
        # One answer per master ({node: info}); a cluster in the middle of an upgrade uses
        # sharded pub/sub only once its last master speaks it.
        versions = [_version(info.get("redis_version", "0")) for info in infos.values()]
        if versions and min(versions) >= SHARDED_SINCE:
            command = SPUBLISH
    _answers[redis] = command
    return command


def known_publish_command(redis: Any) -> str | None:
    """The cached answer of ``room_publish_command`` for ``redis`` (None: not asked yet)."""
    return _answers.get(redis)


def publish(target: Any, channel: str, payload: str, command: str = PUBLISH) -> Any:
    """Queue (on a pipeline) or send (on a client: await the result) one publish.

    Through ``execute_command``: redis-py's cluster pipelines refuse ``.publish()`` (it is on
    their list of blocked commands), but route a PUBLISH/SPUBLISH by its channel's slot."""
    return target.execute_command(command, channel, payload)
