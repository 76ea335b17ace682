"""Who is in the cluster: node heartbeats in Redis, seen by every node within a fraction of a TTL.

A node is live while its heartbeat (stamped with Redis's clock, so node clocks never matter) is
younger than the lease TTL. Room leases are tied to this liveness: keeping a thousand rooms costs
one heartbeat per node, not one renewal per room.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from redis.asyncio import Redis

from . import keys, scripts
from .config import ClusterConfig
from .publishing import publish
from .tasks import TaskGroup, run_forever

logger = logging.getLogger("cluster.membership")

NodeState = Literal["up", "draining"]
ChangeListener = Callable[[set[str], set[str]], Awaitable[None]]


@dataclass
class NodeInfo:
    name: str
    state: NodeState = "up"
    rooms: int = 0
    connections: int = 0
    last_seen_ms: int = 0


@dataclass
class Membership:
    redis: Redis
    config: ClusterConfig
    stats: Callable[[], tuple[int, int]] = lambda: (0, 0)
    on_lost: Callable[[], Awaitable[None]] | None = None
    state: NodeState = "up"
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    redis_time_ms: int = 0
    healthy: bool = False
    redis_errors: int = 0  # heartbeats and refreshes that failed

    def __post_init__(self) -> None:
        self.name = self.config.node_name
        self._session = secrets.token_hex(8)
        self._heartbeat = self.redis.register_script(scripts.NODE_HEARTBEAT)
        self._listeners: list[ChangeListener] = []
        # Changes wait here for the listener task: listeners take seconds (a rebalance hands
        # rooms off), and the poll loop must keep noticing departures meanwhile.
        self._changes: asyncio.Queue[tuple[set[str], set[str]]] = asyncio.Queue()
        self._tasks = TaskGroup("membership")
        self._poke = asyncio.Event()
        self._last_ok_loop_time = 0.0
        self._stopping = False

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    @property
    def live(self) -> list[str]:
        return sorted(self.nodes)

    @property
    def up(self) -> list[str]:
        """Live nodes that take new rooms (draining ones do not)."""
        return sorted(
            n
            for n, info in self.nodes.items()
            if info.state == "up" and not (n == self.name and self.state == "draining")
        )

    def is_live(self, name: str) -> bool:
        return name in self.nodes

    async def start(self) -> None:
        await self._beat(register=True)
        await self.refresh()
        await publish(
            self.redis, keys.CLUSTER_CHANNEL, json.dumps({"op": "join", "node": self.name})
        )
        self._tasks.spawn(
            run_forever("heartbeat", self._beat, interval_s=self.config.heartbeat_interval_s),
            "heartbeat",
        )
        self._tasks.spawn(self._poll_loop(), "poll")
        self._tasks.spawn(self._notify_loop(), "notify")

    async def stop(self) -> None:
        """Leave the cluster at once, so that nobody waits for our heartbeat to expire."""
        self._stopping = True
        self._poke.set()
        await self._tasks.stop()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(keys.node_key(self.name))
                pipe.zrem(keys.NODES, self.name)
                pipe.hdel(keys.NODE_INFO, self.name)
                leave = json.dumps({"op": "leave", "node": self.name})
                publish(pipe, keys.CLUSTER_CHANNEL, leave)
                await pipe.execute()
        except Exception:
            logger.warning("could not announce our departure; peers will see it on expiry")

    def poke(self) -> None:
        """Re-read the membership now (a join or leave was announced)."""
        self._poke.set()

    async def set_state(self, state: NodeState) -> None:
        self.state = state
        await self._beat()

    def seconds_since_healthy(self) -> float:
        return asyncio.get_running_loop().time() - self._last_ok_loop_time

    async def _beat(self, register: bool = False) -> None:
        ttl = self.config.lease_ttl_ms
        try:
            status, now = await self._heartbeat(
                keys=[keys.node_key(self.name)],
                args=[self._session, str(ttl), "register" if register else "renew"],
            )
            if status == "lost":
                logger.warning(
                    "node %s was presumed dead by the cluster; dropping rooms", self.name
                )
                if self.on_lost is not None:
                    await self.on_lost()
                self._session = secrets.token_hex(8)
                status, now = await self._heartbeat(
                    keys=[keys.node_key(self.name)], args=[self._session, str(ttl), "register"]
                )
            rooms, connections = self.stats()
            info = {"state": self.state, "rooms": rooms, "connections": connections}
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(keys.NODES, {self.name: int(now)})
                pipe.hset(keys.NODE_INFO, self.name, json.dumps(info))
                await pipe.execute()
        except Exception:
            self.healthy = False
            self.redis_errors += 1
            raise
        self.healthy = True
        self._last_ok_loop_time = asyncio.get_running_loop().time()

    async def refresh(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            # execute_command: redis-py's cluster pipelines refuse ``.time()`` by name.
            pipe.execute_command("TIME")
            pipe.zrange(keys.NODES, 0, -1, withscores=True)
            pipe.hgetall(keys.NODE_INFO)
            (secs, micros), members, infos = await pipe.execute()
        now = int(secs) * 1000 + int(micros) // 1000
        self.redis_time_ms = now
        ttl = self.config.lease_ttl_ms
        seen: dict[str, NodeInfo] = {}
        stale: list[str] = []
        for name, score in members:
            last = int(score)
            if last < now - ttl:
                if last < now - 20 * ttl:
                    stale.append(name)
                continue
            info = NodeInfo(name=name, last_seen_ms=now - last)
            raw = infos.get(name)
            if raw:
                data = json.loads(raw)
                info.state = "draining" if data.get("state") == "draining" else "up"
                info.rooms = int(data.get("rooms", 0))
                info.connections = int(data.get("connections", 0))
            seen[name] = info
        if stale:
            # Long-dead entries: forget them so the set does not grow with every restart.
            await self.redis.zrem(keys.NODES, *stale)
            await self.redis.hdel(keys.NODE_INFO, *stale)
        joined = set(seen) - set(self.nodes)
        # Never ourselves: a poll that runs before our own late heartbeat (a frozen loop) must
        # not make this node sweep its own rooms as a dead node's. If the cluster did presume
        # us dead, the heartbeat says "lost" and on_lost handles it.
        left = set(self.nodes) - set(seen) - {self.name}
        self.nodes = seen
        if joined or left:
            # The runtime logs one line per node that joined or left.
            logger.debug("membership: joined %s left %s", sorted(joined), sorted(left))
            self._changes.put_nowait((joined, left))

    async def _notify_loop(self) -> None:
        """Tell listeners of each change, in order, outside the poll loop."""
        while True:
            joined, left = await self._changes.get()
            for listener in self._listeners:
                try:
                    await listener(joined, left)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("membership listener failed")

    async def _poll_loop(self) -> None:
        interval = self.config.membership_poll_s
        # The flag as well as cancellation: redis-py can turn a cancellation that lands inside
        # a pipeline into a connection error, which this loop would log and outlive.
        while not self._stopping:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.redis_errors += 1
                logger.warning("membership refresh failed: %s", exc)
                await asyncio.sleep(min(1.0, interval * 4))
            self._poke.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # races with the event being set, and this loop would outlive its owner.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._poke.wait()
