"""Starts, restarts, moves and retires this node's room servers.

The Python take on Horde.DynamicSupervisor: rooms are placed by rendezvous hashing over the live
nodes; a dead node's rooms are claimed by their next preferred node with a higher epoch; a
crashing room server is restarted a few times, then released for another node to try; idle rooms
are passivated; a draining or rebalancing node hands rooms to their successor, who claims at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from . import keys
from .config import ClusterConfig
from .errors import CommandError, Draining, LeaseTaken
from .history import Archive
from .log import RoomLog
from .membership import Membership
from .placement import preferred_node
from .registry import RoomRegistry
from .room_server import Checkpoint, Clock, RoomServer
from .seq_recovery import AskAll
from .state_store import StateStore
from .stats import NodeStats
from .tasks import TaskGroup, run_forever

logger = logging.getLogger("cluster.supervisor")

SeqFloor = Callable[[str], Awaitable[int]]
RoomIsIdle = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True)
class HandoffHint:
    """What a handing-off owner tells its successor: its seq reservation and last seq. When
    Redis still holds both, the successor needs neither the database nor the other nodes."""

    reserved: int
    last_seq: int


RequestClaim = Callable[[str, str, HandoffHint], Awaitable[None]]  # (successor, room, hint)

MAX_RESTARTS = 3  # crashes of one room within RESTART_WINDOW_S before it is released
RESTART_WINDOW_S = 30.0
RESTART_BACKOFF_S = 0.1  # the first restart waits this long, each next one twice as long
# A room released after a crash loop is not taken again here for this long: commands for it
# are answered "unavailable" at once instead of feeding the loop.
QUARANTINE_S = 30.0
HANDOFF_CONCURRENCY = 4  # rooms in hand-off at once (drain, rebalance): each pauses only briefly
SWEEP_INTERVAL_S = 2.0


class Supervisor:
    def __init__(
        self,
        *,
        config: ClusterConfig,
        log: RoomLog,
        store: StateStore,
        registry: RoomRegistry,
        membership: Membership,
        seq_floor: SeqFloor,
        checkpoint: Checkpoint | None,
        room_is_idle: RoomIsIdle,
        request_claim: RequestClaim | None = None,
        clock: Clock = time.monotonic,
        ask_all: AskAll | None = None,
        archive: Archive | None = None,
        stats: NodeStats | None = None,
    ) -> None:
        self.stats = stats if stats is not None else NodeStats()
        self.node = config.node_name
        self._archive = archive
        self._config = config
        self._log = log
        self._store = store
        self._registry = registry
        self._membership = membership
        self._seq_floor = seq_floor
        self._checkpoint = checkpoint
        self._room_is_idle = room_is_idle
        self._request_claim = request_claim
        self._clock = clock
        self._ask_all = ask_all
        self._quarantined: dict[str, float] = {}  # room -> clock time until which it is refused
        self.servers: dict[str, RoomServer] = {}
        # Rooms being handed off right now -> their successor (commands go there meanwhile).
        self.moving: dict[str, str] = {}
        self._activating: dict[str, asyncio.Task[RoomServer]] = {}
        self._crashes: dict[str, list[float]] = {}
        self._tasks = TaskGroup("supervisor")
        self.draining = False
        self.handoffs = 0
        self.takeovers = 0

    async def start(self) -> None:
        self._tasks.spawn(
            run_forever("passivate", self._passivate_idle, interval_s=self._passivate_interval()),
            "passivate",
        )
        self._tasks.spawn(
            run_forever("sweep", self.sweep_orphans, interval_s=SWEEP_INTERVAL_S), "sweep"
        )

    async def stop(self) -> None:
        self.draining = True  # no new activations from here on
        await self._tasks.stop()
        for pending in list(self._activating.values()):
            pending.cancel()
        for server in list(self.servers.values()):
            await server.stop()
        self.servers.clear()

    def get(self, slug: str) -> RoomServer | None:
        server = self.servers.get(slug)
        return server if server is not None and server.accepting else None

    async def activate(
        self, slug: str, *, presumed_dead: str = "", handoff: HandoffHint | None = None
    ) -> RoomServer:
        """Own ``slug`` here (claiming its lease) and serve it.

        Raises LeaseTaken (a live node owns it), Draining, or CommandError("unavailable") for
        a room quarantined after a crash loop.

        ``handoff``: what a handing-off owner passed on (see HandoffHint).
        """
        server = self.get(slug)
        if server is not None:
            return server
        if self.draining:
            raise Draining(self.node)
        until = self._quarantined.get(slug)
        if until is not None:
            if self._clock() < until:
                raise CommandError("unavailable", "this room keeps failing here; try later")
            del self._quarantined[slug]
        pending = self._activating.get(slug)
        if pending is None:
            pending = asyncio.get_running_loop().create_task(
                self._activate(slug, presumed_dead, handoff)
            )
            self._activating[slug] = pending
            pending.add_done_callback(lambda t: self._activation_done(slug, t))
        return await asyncio.shield(pending)

    def _activation_done(self, slug: str, task: asyncio.Task[RoomServer]) -> None:
        self._activating.pop(slug, None)
        if not task.cancelled():
            task.exception()  # retrieved here; the awaiting caller handles it

    async def _activate(
        self, slug: str, presumed_dead: str, handoff: HandoffHint | None
    ) -> RoomServer:
        old = self.servers.pop(slug, None)
        if old is not None:
            await old.stop()
        started = time.monotonic()
        lease = await self._registry.claim(slug, presumed_dead=presumed_dead)
        floor = await self._seq_floor_for(slug, handoff)
        server = RoomServer(
            lease,
            log=self._log,
            store=self._store,
            config=self._config,
            seq_floor=floor,
            checkpoint=self._checkpoint,
            clock=self._clock,
            ask_all=self._ask_all,
            predecessor_last=handoff.last_seq if handoff is not None else None,
            archive=self._archive,
            stats=self.stats,
        )
        try:
            await server.start()
        except BaseException:
            await self._registry.release(lease)
            raise
        self.servers[slug] = server
        assert server.task is not None
        server.task.add_done_callback(lambda task: self._on_server_done(server, task))
        if presumed_dead:
            self.takeovers += 1
            self.stats.takeover_duration.observe(time.monotonic() - started)
            await self._registry.forget_index(presumed_dead, [slug])
            logger.info(
                "room %s taken over from dead node %s at epoch %d",
                slug, presumed_dead, lease.epoch,
                extra={"event": "room_taken_over", "room": slug, "from_node": presumed_dead},
            )  # fmt: skip
        else:
            logger.info(
                "room %s claimed here at epoch %d",
                slug, lease.epoch,
                extra={"event": "room_claimed", "room": slug, "epoch": lease.epoch},
            )  # fmt: skip
        return server

    async def _seq_floor_for(self, slug: str, handoff: HandoffHint | None) -> int:
        # A planned hand-off: if Redis kept the predecessor's reservation, nothing was lost
        # since it was made, and the database (a slow, shared resource) need not be asked.
        if handoff and handoff.reserved and await self._log.reservation(slug) >= handoff.reserved:
            return handoff.reserved
        return await self._seq_floor(slug)

    def _on_server_done(self, server: RoomServer, task: asyncio.Task[Any]) -> None:
        if self.servers.get(server.slug) is not server:
            return
        if task.cancelled() or task.exception() is None:
            if server.fenced:
                self.servers.pop(server.slug, None)
            return
        logger.error("room server %s crashed", server.slug, exc_info=task.exception())
        now = self._clock()
        crashes = [t for t in self._crashes.get(server.slug, []) if t > now - RESTART_WINDOW_S]
        crashes.append(now)
        self._crashes[server.slug] = crashes
        self.servers.pop(server.slug, None)
        if len(crashes) > MAX_RESTARTS:
            logger.error(
                "room %s crashed %d times in %.0fs; releasing it for %.0fs",
                server.slug, len(crashes), RESTART_WINDOW_S, QUARANTINE_S,
            )  # fmt: skip
            self._quarantined[server.slug] = now + QUARANTINE_S
            self._crashes.pop(server.slug, None)
            self._tasks.spawn(self._retire(server, successor=None), f"retire:{server.slug}")
        else:
            delay = RESTART_BACKOFF_S * 2 ** (len(crashes) - 1)
            self._tasks.spawn(self._restart(server.slug, delay), f"restart:{server.slug}")

    async def _restart(self, slug: str, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self.activate(slug)
        except (LeaseTaken, Draining, CommandError):
            pass

    async def _retire(self, server: RoomServer, *, successor: str | None) -> None:
        await server.stop()
        if self.servers.get(server.slug) is server:
            del self.servers[server.slug]
        await self._registry.release(server.lease, successor=successor)

    async def handoff(self, slug: str, successor: str | None) -> bool:
        """Move ``slug`` to ``successor`` (who claims at once when told); False if not ours."""
        server = self.servers.get(slug)
        if server is None:
            return False
        if successor is not None:
            self.moving[slug] = successor
        started = time.monotonic()
        try:
            await self._retire(server, successor=successor)
            self.handoffs += 1
            await self._confirm(slug, successor, HandoffHint(server.reserved, server.last_seq))
        finally:
            self.moving.pop(slug, None)
        elapsed = time.monotonic() - started
        self.stats.handoff_duration.observe(elapsed)
        logger.info(
            "room %s moved to %s in %.3fs",
            slug, successor or "whoever claims it first", elapsed,
            extra={"event": "room_moved", "room": slug, "to_node": successor,
                   "duration_s": round(elapsed, 4)},
        )  # fmt: skip
        return True

    async def _confirm(self, slug: str, successor: str | None, hint: HandoffHint) -> None:
        if successor is not None and self._request_claim is not None:
            # Ask the successor directly and wait for its claim: when this returns, the room
            # has its new owner (the release announcement is the fallback if this fails).
            try:
                await self._request_claim(successor, slug, hint)
            except Exception as exc:
                logger.warning(
                    "%s did not confirm taking %s (%s); it claims on first use",
                    successor,
                    slug,
                    exc,
                )

    async def drop_all(self) -> None:
        """The cluster presumed us dead: our leases may be someone else's now. Stop serving."""
        servers = list(self.servers.values())
        self.servers.clear()
        for server in servers:
            server.fence()
        for server in servers:
            await server.stop()

    async def drain(self) -> None:
        """Hand every room to its next preferred node; they claim at once, nobody waits."""
        self.draining = True
        others = [n for n in self._membership.up if n != self.node]
        await self._handoff_all([(slug, preferred_node(slug, others)) for slug in self.servers])

    async def _handoff_all(self, moves: list[tuple[str, str | None]]) -> None:
        """Hand rooms off a few at a time. A room pauses from the moment its server stops until
        its successor serves it; handing all of them off at once would make every room wait for
        the whole batch, while the rooms not yet moved keep serving here meanwhile."""
        gate = asyncio.Semaphore(HANDOFF_CONCURRENCY)

        async def one(slug: str, successor: str | None) -> None:
            async with gate:
                try:
                    await self.handoff(slug, successor)
                except Exception:
                    logger.exception("hand-off of %s failed; its lease expires instead", slug)

        await asyncio.gather(*(one(slug, successor) for slug, successor in moves))

    async def on_membership(self, joined: set[str], left: set[str]) -> None:
        for node in left:
            self._registry.forget_node(node)
        if left:
            await self.sweep_orphans(dead=sorted(left))
        if joined - {self.node} and not self.draining:
            await self.rebalance()

    async def sweep_orphans(self, dead: list[str] | None = None) -> None:
        """Claim the rooms of dead nodes for which this node is now the preferred owner."""
        if self.draining or not self._membership.healthy:
            return
        if dead is None:
            dead = await self._dead_nodes()
        up = self._membership.up
        for node in dead:
            for slug in await self._registry.rooms_of(node):
                if preferred_node(slug, up) != self.node or slug in self.servers:
                    continue
                try:
                    await self.activate(slug, presumed_dead=node)
                except LeaseTaken as taken:
                    if taken.owner != node:
                        await self._registry.forget_index(node, [slug])
                except Exception:
                    logger.exception("taking over %s from %s failed", slug, node)

    async def _dead_nodes(self) -> list[str]:
        members = await self._membership.redis.zrange(keys.NODES, 0, -1)
        return [m for m in members if not self._membership.is_live(m)]

    async def rebalance(self) -> None:
        """Move rooms that now prefer another (up) node to it, a few at a time."""
        up = self._membership.up
        moving = [s for s in self.servers if preferred_node(s, up) not in (self.node, None)]
        await self._handoff_all([(slug, preferred_node(slug, up)) for slug in moving])

    async def _passivate_idle(self) -> None:
        cutoff = self._clock() - self._config.room_idle_s
        for slug, server in list(self.servers.items()):
            if server.last_activity < cutoff and await self._room_is_idle(slug):
                logger.info("passivating idle room %s", slug)
                await self._retire(server, successor=None)

    def _passivate_interval(self) -> float:
        return max(0.5, min(10.0, self._config.room_idle_s / 4))
