"""The cluster runtime of one node: the single facade that ``rooms/`` talks to.

Lifecycle: ``start()`` (connect, join, serve) → ``drain()`` on SIGTERM (hand rooms off, close
sockets with 1012) → ``stop()`` (leave, cancel every task). Everything it starts, it stops.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from . import keys
from .commands import Ack, Command
from .config import ClusterConfig
from .connection import async_redis
from .errors import ERROR_CODES, CommandError, Draining, LeaseTaken
from .fanout import Attachment, Fanout, Listener
from .fastlane import FastLane
from .history import Archive, read_through
from .hub import PubSubHub
from .log import LogRange, RoomLog
from .membership import Membership
from .placement import preferred_node
from .registry import RoomRegistry
from .replication import ReplicaWait
from .router import CommandRouter
from .rpc import Rpc
from .seq_recovery import ASK_NODES_TIMEOUT_S, SeqWitness
from .state_store import StateStore
from .stats import NodeStats
from .supervisor import HandoffHint, Supervisor
from .tasks import TaskGroup

logger = logging.getLogger("cluster.runtime")


class RuntimeState(enum.StrEnum):
    """A node's lifecycle. String-valued so that JSON and log lines show the plain name."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


_TRANSITIONS: dict[RuntimeState, frozenset[RuntimeState]] = {
    RuntimeState.NEW: frozenset({RuntimeState.STARTING, RuntimeState.STOPPED}),
    RuntimeState.STARTING: frozenset({RuntimeState.RUNNING, RuntimeState.STOPPED}),
    RuntimeState.RUNNING: frozenset({RuntimeState.DRAINING, RuntimeState.STOPPED}),
    RuntimeState.DRAINING: frozenset({RuntimeState.STOPPED}),
    RuntimeState.STOPPED: frozenset(),
}
CLOSE_DRAINING = 1012
SOCKET_CLOSE_WAIT_S = 3.0
HANDOFF_CONFIRM_S = 2.0  # a successor that takes longer gets the room on first use instead


async def _no_floor(slug: str) -> int:
    return 0


Worker = Callable[["ClusterRuntime"], Coroutine[Any, Any, None]]


@dataclass
class RuntimeHooks:
    """What the cluster asks of the application (the database, in ``rooms/``)."""

    # The highest seq the application durably knows for a room (seqs never go below it).
    seq_floor: Callable[[str], Awaitable[int]] = _no_floor
    # Called now and then with a room's highest seq, to be kept outside Redis.
    checkpoint: Callable[[str, int], Awaitable[None]] | None = None
    # History kept outside Redis (cluster.history): reads reach into it for what the log no
    # longer holds, and a room's next owner refills an emptied log from it.
    archive: Archive | None = None
    # Long-running work of the application tied to this node's life (the archiver): each is
    # called with the runtime once it runs, and cancelled (then awaited) when it stops.
    workers: list[Worker] = field(default_factory=list)


@dataclass
class ClusterRuntime:
    config: ClusterConfig
    redis_url: str = field(repr=False)  # may hold a password
    hooks: RuntimeHooks = field(default_factory=RuntimeHooks)
    state: RuntimeState = RuntimeState.NEW
    # The event loop it runs in, from ``start()``: threads hand it work there (its Redis
    # connections belong to that loop and no other).
    loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.node = self.config.node_name
        # What rooms/metrics.py exports besides the components' own counters.
        self.stats = NodeStats()
        self.redis = async_redis(self.redis_url)
        # The per-message commands (the append, node-to-node requests) on one pipelined
        # connection; None where it cannot follow the client (Redis Cluster, TLS).
        self.fast = FastLane.for_client(self.redis)
        self.replicas = ReplicaWait(
            self.redis,
            min_replicas=self.config.min_replicas,
            timeout_ms=self.config.replica_wait_ms,
        )
        self.log = RoomLog(
            self.redis,
            history_limit=self.config.history_limit,
            dedupe_ttl_s=self.config.dedupe_ttl_s,
            replicas=self.replicas,
            hot=self.fast,
        )
        self.hub = PubSubHub(self.redis, on_reconnect=self._on_reconnect)
        self.registry = RoomRegistry(self.redis, self.node, replicas=self.replicas)
        self.membership = Membership(
            self.redis, self.config, stats=self._stats, on_lost=self._on_lost
        )
        self.fanout = Fanout(
            self.redis,
            self.hub,
            self.log,
            self.node,
            is_live=self.membership.is_live,
            repair_interval_s=self.config.lease_ttl_ms / 1000,
            stats=self.stats,
        )
        self.supervisor = Supervisor(
            config=self.config,
            log=self.log,
            store=StateStore(self.redis),
            registry=self.registry,
            membership=self.membership,
            seq_floor=self.hooks.seq_floor,
            checkpoint=self.hooks.checkpoint,
            room_is_idle=self._room_is_idle,
            request_claim=self._request_claim,
            ask_all=self.ask_all,
            archive=self.hooks.archive,
            stats=self.stats,
        )
        # The highest seq this node has acked per room: what it tells a room's next owner.
        self.witness = SeqWitness()
        self.rpc = Rpc(self.fast or self.redis, self.hub, self.node, self._serve_rpc)
        self.router = CommandRouter(
            config=self.config,
            registry=self.registry,
            membership=self.membership,
            supervisor=self.supervisor,
            rpc=self.rpc,
        )
        self.membership.add_listener(self._on_membership)
        self._tasks = TaskGroup("runtime")

    # -- lifecycle -----------------------------------------------------------------------

    def _become(self, state: RuntimeState) -> None:
        if state not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"runtime {self.node}: {self.state} -> {state}")
        logger.debug("runtime %s: %s -> %s", self.node, self.state, state)
        self.state = state

    @property
    def accepting_sockets(self) -> bool:
        """New sockets are welcome (not starting, draining or stopped)."""
        return self.state is RuntimeState.RUNNING

    async def start(self) -> None:
        self._become(RuntimeState.STARTING)
        self.loop = asyncio.get_running_loop()
        await self.hub.start()
        await self.hub.subscribe(keys.CLUSTER_CHANNEL, self._on_cluster_message)
        await self.rpc.start()
        # Before we are seen live: nobody may mistake a predecessor's presence for ours.
        stale = await self.fanout.clear_stale_presence()
        if stale:
            logger.info("cleared %d presence entries left by an earlier %s", stale, self.node)
        self.fanout.start()
        await self.membership.start()
        await self.replicas.warn_if_short()
        await self.supervisor.start()
        for number, worker in enumerate(self.hooks.workers):
            self._tasks.spawn(worker(self), f"worker{number}:{getattr(worker, '__name__', '')}")
        self._become(RuntimeState.RUNNING)
        logger.info(
            "node %s joined the cluster (%d live)", self.node, len(self.membership.live),
            extra={"event": "node_joined", "live_nodes": len(self.membership.live)},
        )  # fmt: skip

    async def drain(self, timeout_s: float | None = None) -> None:
        """Stop taking traffic, hand every room off, close sockets with 1012."""
        if self.state is not RuntimeState.RUNNING:
            return
        self._become(RuntimeState.DRAINING)
        timeout = timeout_s if timeout_s is not None else self.config.drain_timeout_s
        loop = asyncio.get_running_loop()
        started = loop.time()
        logger.info(
            "drain started: handing off %d rooms, closing %d sockets",
            len(self.supervisor.servers), self.fanout.connections,
            extra={"event": "drain_started", "rooms": len(self.supervisor.servers)},
        )  # fmt: skip
        try:
            await asyncio.wait_for(self._drain_steps(), timeout)
        except TimeoutError:
            logger.error("drain did not finish in %.1fs; stopping anyway", timeout)
        elapsed = loop.time() - started
        logger.info(
            "drain finished in %.3fs", elapsed,
            extra={"event": "drain_finished", "duration_s": round(elapsed, 4)},
        )  # fmt: skip

    async def _drain_steps(self) -> None:
        try:
            await self.membership.set_state("draining")
        except Exception:
            logger.warning("could not announce draining; handing rooms off anyway")
        await self.supervisor.drain()
        self.fanout.close_all(CLOSE_DRAINING)
        # Sockets go as their clients answer the close; a client that never answers is cut
        # when the server stops.
        deadline = asyncio.get_running_loop().time() + SOCKET_CLOSE_WAIT_S
        while self.fanout.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.state is RuntimeState.STOPPED:
            return
        self._become(RuntimeState.STOPPED)
        await self._tasks.stop()
        await self.supervisor.stop()
        await self.fanout.stop()
        await self.rpc.stop()
        await self.membership.stop()
        await self.hub.stop()
        if self.fast is not None:
            await self.fast.close()
        await self.redis.aclose()

    @property
    def ready(self) -> bool:
        return (
            self.state is RuntimeState.RUNNING
            and self.membership.healthy
            and self.hub.connected.is_set()
            and self.membership.seconds_since_healthy() < self.config.lease_ttl_ms / 1000
        )

    # -- what the consumer and views use ---------------------------------------------------

    async def submit(self, slug: str, command: Command, *, received_at: float | None = None) -> Ack:
        """Run ``command`` at the room's owner; answered by CHAT_SEND_TIMEOUT_MS after
        ``received_at`` (loop time, default now). Raises CommandError."""
        try:
            ack = await self.router.submit(slug, command, received_at=received_at)
        except CommandError as exc:
            # Error codes are a closed set; anything else would be a label nobody graphs.
            code = exc.code if exc.code in ERROR_CODES else "error"
            self.stats.count_command(command.type, code)
            raise
        except Exception:
            self.stats.count_command(command.type, "error")
            raise
        self.stats.count_command(command.type, "ok")
        self.witness.observe(slug, ack.seq)
        return ack

    async def attach(self, slug: str, listener: Listener) -> Attachment:
        return await self.fanout.attach(slug, listener)

    async def detach(self, slug: str, listener: Listener) -> None:
        await self.fanout.detach(slug, listener)

    async def events(self, slug: str, *, after: int, limit: int) -> LogRange:
        """Events above ``after`` (``RoomLog.read``'s contract), from the log and, for what it
        no longer holds, from the archive (cluster.history)."""
        return await read_through(self.log, self.hooks.archive, slug, after=after, limit=limit)

    async def typing(self, slug: str, user: str) -> None:
        await self.fanout.typing(slug, user)

    async def online(self, slugs: list[str]) -> dict[str, list[str]]:
        """Users present in each room, cluster-wide, in one round trip."""
        return await self.fanout.online(slugs)

    def present(self, slug: str) -> list[str] | None:
        """Who is in ``slug`` as this node shows it to its sockets, without a round trip; None
        when no socket of ours is in the room. A snapshot for a ``presence_state``: the diffs
        this node sends after it make it right."""
        if not self.fanout.presence.is_open(slug):
            return None
        return self.fanout.presence.users(slug)

    async def cluster_view(self) -> dict[str, Any]:
        # From the membership the poll loop keeps (at most a poll interval old): an HTTP
        # request must not run a refresh, and with it rebalances and hand-offs.
        nodes = [
            {
                "name": info.name,
                "state": info.state,
                "rooms": info.rooms,
                "connections": info.connections,
                "last_seen_ms": info.last_seen_ms,
            }
            for info in sorted(self.membership.nodes.values(), key=lambda i: i.name)
        ]
        leases = await self.registry.leases_of(self.membership.live)
        rooms = [{"slug": x.slug, "owner": x.node, "epoch": x.epoch} for x in leases]
        return {"node": self.node, "nodes": nodes, "rooms": rooms}

    # -- wiring ----------------------------------------------------------------------------

    def _stats(self) -> tuple[int, int]:
        return len(self.supervisor.servers), self.fanout.connections

    async def _room_is_idle(self, slug: str) -> bool:
        return not (await self.online([slug]))[slug]

    def known_seq(self, slug: str) -> int:
        """The highest seq of ``slug`` this node has seen (acked, delivered or assigned)."""
        room = self.fanout.rooms.get(slug)
        server = self.supervisor.servers.get(slug)
        return max(
            self.witness.known(slug),
            room.last_seq if room is not None else 0,
            server.last_seq if server is not None else 0,
        )

    async def ask_all(self, slug: str) -> list[int]:
        """What every live node (draining ones too) knows of ``slug``'s seqs, for a new owner
        checking that Redis did not lose what somebody saw (guarantee 8)."""
        others = [n for n in self.membership.live if n != self.node]

        async def one(node: str) -> int:
            # Inside the asker's own bound: a slow peer is left out, but this node's answer
            # (computed below) always arrives. Were the asker to time out first, it would drop
            # our own seqs too and could reissue them (seen in a shard fail-over under load).
            timeout = ASK_NODES_TIMEOUT_S * 0.8
            reply = await self.rpc.call(node, "known_seq", {"room": slug}, timeout=timeout)
            return int(reply.get("seq", 0))

        answers = await asyncio.gather(*(one(n) for n in others), return_exceptions=True)
        return [self.known_seq(slug), *(a for a in answers if isinstance(a, int))]

    async def _serve_rpc(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        if op == "known_seq":
            return {"seq": self.known_seq(str(payload["room"]))}
        if op == "claim":
            try:
                reserved, last_seq = payload.get("reserved"), payload.get("last_seq")
                hint = (
                    HandoffHint(reserved, last_seq)
                    if isinstance(reserved, int) and isinstance(last_seq, int)
                    else None
                )
                await self.supervisor.activate(str(payload["room"]), handoff=hint)
            except LeaseTaken as taken:
                return {"error": "not_owner", "owner": taken.owner}
            except Draining:
                return {"error": "not_owner", "owner": None}
            return {"ok": True}
        return await self.router.serve(op, payload)

    async def _move(self, slug: str, to: object) -> None:
        """Hand a room we own to ``to`` (or its next preferred node): the admin's "move"."""
        others = [n for n in self.membership.up if n != self.node]
        target = to if isinstance(to, str) and to in others else preferred_node(slug, others)
        if target is None:
            logger.warning("cannot move %s: no other node is up", slug)
            return
        await self.supervisor.handoff(slug, target)

    async def _request_claim(self, node: str, slug: str, hint: HandoffHint) -> None:
        payload = {"room": slug, "reserved": hint.reserved, "last_seq": hint.last_seq}
        reply = await self.rpc.call(node, "claim", payload, timeout=HANDOFF_CONFIRM_S)
        if "error" in reply:
            raise RuntimeError(f"claim refused: {reply}")

    async def _on_lost(self) -> None:
        # Presumed dead: maybe paused, maybe Redis lost everything (a FLUSHALL, a replaced
        # server). Stop writing, re-announce presence, and check every room's log.
        await self.supervisor.drop_all()
        await self.fanout.resync()

    async def _on_reconnect(self) -> None:
        self.membership.poke()
        await self.fanout.resync()

    async def _on_membership(self, joined: set[str], left: set[str]) -> None:
        for node in sorted(joined - {self.node}):
            logger.info("node %s joined", node, extra={"event": "peer_joined", "peer": node})
        for node in sorted(left):
            logger.info("node %s left", node, extra={"event": "peer_left", "peer": node})
        if left:
            await self.fanout.on_nodes_left(left)
        if joined:
            self.fanout.on_nodes_joined(joined)
        await self.supervisor.on_membership(joined, left)

    def _on_cluster_message(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            logger.warning("malformed cluster message dropped: %.200s", data)
            return
        op = message.get("op")
        if op in ("join", "leave"):
            self.membership.poke()
        elif op == "move" and str(message.get("room")) in self.supervisor.servers:
            self._tasks.spawn(self._move(str(message["room"]), message.get("to")), "move")
        elif op in ("owner", "released"):
            # A hand-off's successor is asked by RPC (with the seq reservation); the
            # announcement only corrects caches.
            self.registry.on_announcement(message)
