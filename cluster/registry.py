"""Who owns which room: a fenced lease per active room, readable from any node.

The lease is a hash ``{node, epoch}`` with no TTL of its own: it is valid while its node is live
(see membership), so upkeep is one heartbeat per node. The epoch only grows; every append checks
it, so an owner that lost its lease cannot write, whatever it still believes. Lookups are cached
and the cache is corrected by ownership announcements and by membership changes, not by polling.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from redis.asyncio import Redis

from . import keys, scripts
from .errors import LeaseTaken
from .keys import RoomKeys
from .publishing import publish
from .replication import ReplicaWait

logger = logging.getLogger("cluster.registry")


@dataclass(frozen=True)
class Lease:
    slug: str
    node: str
    epoch: int


class RoomRegistry:
    def __init__(self, redis: Redis, node: str, *, replicas: ReplicaWait | None = None) -> None:
        self._redis = redis
        self._node = node
        # A claim (its epoch INCR and the lease) waits for the replicas like an append: a room
        # server starts only on a lease that a fail-over cannot take back to the previous
        # owner's older epoch (that owner could append again while this one believes it owns
        # the room; this one's appends would be fenced only from its next one on).
        self._replicas = replicas or ReplicaWait(redis, min_replicas=0, timeout_ms=0)
        self._claim = redis.register_script(scripts.CLAIM_LEASE)
        self._release = redis.register_script(scripts.RELEASE_LEASE)
        self._cache: dict[str, Lease | None] = {}
        self.highest_epoch_seen: dict[str, int] = {}

    async def lookup(self, slug: str, *, fresh: bool = False) -> Lease | None:
        if not fresh and slug in self._cache:
            return self._cache[slug]
        raw = await self._redis.hgetall(RoomKeys(slug).lease)
        lease = Lease(slug, raw["node"], int(raw["epoch"])) if raw else None
        self._remember(slug, lease)
        return lease

    async def claim(self, slug: str, *, presumed_dead: str = "") -> Lease:
        """Take the room with a new epoch; raises LeaseTaken if a live owner holds it, or
        ReplicasBehind (retryable: a retry claims again, with a higher epoch)."""
        k = RoomKeys(slug)
        floor = self.highest_epoch_seen.get(slug, 0)
        status, owner, epoch = await self._replicas.script(
            self._claim,
            keys=[k.lease, k.epoch],
            args=[self._node, presumed_dead, str(floor)],
            wrote=lambda reply: reply[0] == "ok",
        )
        if status != "ok":
            lease = Lease(slug, owner, int(epoch or 0))
            self._remember(slug, lease)
            raise LeaseTaken(slug, owner, int(epoch or 0))
        lease = Lease(slug, self._node, int(epoch))
        self._remember(slug, lease)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.sadd(keys.node_rooms_key(self._node), slug)
            publish(pipe, keys.CLUSTER_CHANNEL, _announce("owner", lease))
            await pipe.execute()
        return lease

    async def release(self, lease: Lease, *, successor: str | None = None) -> bool:
        """Give the room up if it is still ours; ``successor`` is told to claim it at once."""
        k = RoomKeys(lease.slug)
        released = bool(await self._release(keys=[k.lease], args=[lease.node, str(lease.epoch)]))
        self._remember(lease.slug, None)
        payload = json.loads(_announce("released", lease))
        payload["successor"] = successor
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.srem(keys.node_rooms_key(lease.node), lease.slug)
            if released:
                publish(pipe, keys.CLUSTER_CHANNEL, json.dumps(payload))
            await pipe.execute()
        return released

    async def rooms_of(self, node: str) -> list[str]:
        """The rooms a node (perhaps a dead one) is indexed as owning."""
        return sorted(await self._redis.smembers(keys.node_rooms_key(node)))

    async def leases_of(self, nodes: list[str]) -> list[Lease]:
        """Every current lease held by ``nodes``, read in two round trips."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for node in nodes:
                pipe.smembers(keys.node_rooms_key(node))
            room_sets = await pipe.execute()
        slugs = sorted({slug for rooms in room_sets for slug in rooms})
        if not slugs:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for slug in slugs:
                pipe.hmget(RoomKeys(slug).lease, "node", "epoch")
            rows = await pipe.execute()
        wanted = set(nodes)
        return [
            Lease(slug, node, int(epoch))
            for slug, (node, epoch) in zip(slugs, rows, strict=True)
            if node in wanted and epoch is not None
        ]

    async def forget_index(self, node: str, slugs: list[str]) -> None:
        if slugs:
            await self._redis.srem(keys.node_rooms_key(node), *slugs)

    def on_announcement(self, message: dict[str, object]) -> None:
        slug = message.get("room")
        if not isinstance(slug, str):
            return
        if message.get("op") == "owner":
            lease = Lease(slug, str(message["node"]), int(str(message["epoch"])))
            self._remember(slug, lease)
        elif message.get("op") == "released":
            self._cache.pop(slug, None)

    def forget_node(self, node: str) -> None:
        """A node died: its cached leases are no longer answers."""
        for slug, lease in list(self._cache.items()):
            if lease is not None and lease.node == node:
                del self._cache[slug]

    def invalidate(self, slug: str) -> None:
        self._cache.pop(slug, None)

    def _remember(self, slug: str, lease: Lease | None) -> None:
        if lease is not None:
            self.highest_epoch_seen[slug] = max(self.highest_epoch_seen.get(slug, 0), lease.epoch)
        if lease is None:
            self._cache.pop(slug, None)
        else:
            self._cache[slug] = lease


def _announce(op: str, lease: Lease) -> str:
    return json.dumps({"op": op, "room": lease.slug, "node": lease.node, "epoch": lease.epoch})
