"""The node's pub/sub connections, shared by every room, the RPC inbox and membership.

Pub/sub is at-most-once: whatever was published while a connection was down is gone. So the
hub reconnects with backoff, re-subscribes every channel, and then tells its listeners, who fill
their gaps from the durable log.

A connection can also die without closing (a half-open TCP connection, a black-holed network):
reads then simply time out and the node would hear nothing, forever. So when a connection has
been silent for a while the hub sends a PING on it and treats a missing PONG as a lost connection.

Connections ("links"):

- One Redis or Sentinel: one classic link (SUBSCRIBE) carries every channel.
- A Redis Cluster 6.2: one classic link to any node carries every channel; the cluster
  broadcasts every classic PUBLISH to all its nodes. If that node goes, the link moves on to
  another one.
- A Redis Cluster 7+: room channels (``subscribe(..., sharded=True)``) go by sharded pub/sub
  (cluster/publishing.py): one link per shard master, SSUBSCRIBE on the master that holds the
  channel's slot; so does each node's RPC inbox (its own hash tag ``{node:NAME}``), which makes
  SPUBLISH's answer (how many heard it) exact. Cluster-wide announcements stay on the classic
  link: every node must hear them, and a cluster broadcasts a classic PUBLISH to all nodes.
  redis-py's async PubSub has no ``ssubscribe``: the hub sends SSUBSCRIBE/SUNSUBSCRIBE itself
  and reads the ``smessage``/``sunsubscribe`` pushes from ``get_message``, which returns
  message types it does not know as they are.

A shard link that fails (its master died, a fail-over is under way) is dropped and its channels
are placed again from a fresh slot map, on whichever master holds each slot now; the hub then
calls ``on_reconnect`` (every room fills its gap from the log). A ``sunsubscribe`` that the hub
did not ask for means the channel's slot moved to another master (a resharding): that channel
alone is placed again, and its own ``on_resubscribed`` callback fills that room's gap.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .fastlane import LeanPubSub
from .publishing import PUBLISH, SPUBLISH, room_publish_command
from .tasks import cancel_and_wait

logger = logging.getLogger("cluster.hub")

Handler = Callable[[str], None]

READ_WAIT_S = 0.5  # one wait for a message; bounds how late a health check can start
SILENCE_BEFORE_PING_S = 2.0  # no message for this long: ask the server if it is still there
PONG_TIMEOUT_S = 3.0  # no answer to that PING for this long: the connection is dead
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0
IDLE_CHANNEL = "chat:__hub__"  # subscribed when nothing else is, so a dead Redis shows at start


def subscriber(client: Redis) -> PubSub | LeanPubSub:
    """A link's connection: the lean one (cluster/fastlane.py: messages parsed as they
    arrive, ~4 % of a node's CPU under fan-out load saved) where it can follow the client,
    redis-py's PubSub otherwise (TLS)."""
    return LeanPubSub.for_client(client) or client.pubsub()


class HalfOpenConnection(ConnectionError):
    """The pub/sub connection stopped answering PINGs."""


class NotMaster(Exception):
    """A shard link would have gone to a node that is not (or no longer) a master."""


@dataclass(eq=False)
class _Link:
    """One pub/sub connection and the channels it carries."""

    name: str  # "classic" or the shard master's "host:port"
    sharded: bool
    pubsub: PubSub | LeanPubSub
    channels: set[str] = field(default_factory=set)
    # Channels we asked to leave, until Redis confirms: their sunsubscribe is no slot move.
    leaving: set[str] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    client: Redis | None = None  # the link's own client (cluster links), closed with it

    async def send(self, command: str, *channels: str) -> None:
        await self.pubsub.execute_command(command, *channels)

    async def close(self) -> None:
        try:
            await self.pubsub.aclose()
        except Exception:
            logger.debug("closing a broken pubsub connection failed", exc_info=True)
        if self.client is not None:
            try:
                await self.client.aclose()
            except Exception:
                logger.debug("closing a link's client failed", exc_info=True)


class PubSubHub:
    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._redis = redis
        self._cluster = isinstance(redis, RedisCluster)
        self._handlers: dict[str, Handler] = {}
        self._sharded_wanted: set[str] = set()  # channels subscribed with sharded=True
        self._on_resubscribed: dict[str, Callable[[], None]] = {}
        self._on_reconnect = on_reconnect
        self._lock = asyncio.Lock()
        self._classic: _Link | None = None
        self._classic_task: asyncio.Task[None] | None = None
        self._shards: dict[str, _Link] = {}  # master name -> its link
        self._placement: dict[str, _Link] = {}  # sharded channel -> the link carrying it
        self._unplaced: dict[str, bool] = {}  # sharded channel -> moved alone (not a lost link)
        # The hub's own view of who serves which slot (CLUSTER SLOTS), read after a failure:
        # (first slot, last slot, host, port) sorted. Empty: use the cluster client's view.
        self._slot_owners: list[tuple[int, int, str, int]] = []
        self._placer: asyncio.Task[None] | None = None
        self._classic_up = False
        self._stopping = False
        self.sharded = False  # room channels go by SSUBSCRIBE (known after start)
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.errors = 0  # connections lost (or never made): a Redis error each
        self.messages = 0
        self.half_open_detected = 0
        self.slot_moves = 0  # sharded channels placed again after their slot moved

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._cluster:
            self.sharded = await room_publish_command(self._redis) == SPUBLISH
        await self._connect_classic()
        self._classic_task = asyncio.get_running_loop().create_task(
            self._classic_loop(), name="hub"
        )

    async def stop(self) -> None:
        self._stopping = True  # no placer starts again behind our back
        await cancel_and_wait(self._placer)
        self._placer = None
        await cancel_and_wait(self._classic_task)
        self._classic_task = None
        for link in list(self._shards.values()):
            await cancel_and_wait(link.task)
            await link.close()
        self._shards.clear()
        self._placement.clear()
        self._classic_up = False
        self._update_connected()
        classic, self._classic = self._classic, None
        if classic is not None:
            await classic.close()

    @property
    def classic_node(self) -> str | None:
        """``host:port`` of the Redis that the classic link is connected to (None: down)."""
        link = self._classic
        if link is None or not self._classic_up:
            return None
        kwargs = link.pubsub.connection_pool.connection_kwargs
        return f"{kwargs.get('host')}:{kwargs.get('port')}"

    @property
    def shard_nodes(self) -> list[str]:
        """``host:port`` of every shard master a sharded link is open to."""
        return sorted(self._shards)

    # -- what publishers need to know ------------------------------------------------------

    def publish_command(self, *, sharded: bool) -> str:
        """The command that reaches subscribers of a channel subscribed with ``sharded``."""
        return SPUBLISH if sharded and self.sharded else PUBLISH

    def counts_listeners(self, *, sharded: bool) -> bool:
        """Whether a publish's answer counts every subscriber of such a channel. A Redis
        Cluster answers a classic PUBLISH with the subscribers of the node that took it only
        (it broadcasts to the others over its bus): zero there proves nothing."""
        return not self._cluster or (sharded and self.sharded)

    # -- subscriptions -------------------------------------------------------------------

    async def subscribe(
        self,
        channel: str,
        handler: Handler,
        *,
        sharded: bool = False,
        on_resubscribed: Callable[[], None] | None = None,
    ) -> None:
        """Deliver ``channel``'s messages to ``handler``. ``sharded``: the channel carries a
        hash tag and publishers use ``publish_command(sharded=True)`` (a room's events, a
        node's RPC inbox): SSUBSCRIBE on a Redis Cluster 7+, else SUBSCRIBE.
        ``on_resubscribed``: called after the channel alone was subscribed again elsewhere
        (its slot moved); whatever was published meanwhile is lost to pub/sub."""
        async with self._lock:
            self._handlers[channel] = handler
            if on_resubscribed is not None:
                self._on_resubscribed[channel] = on_resubscribed
            if sharded and self.sharded:
                self._sharded_wanted.add(channel)
                try:
                    await self._place(channel)
                except Exception as exc:
                    # The placer retries with a fresh slot map; the room fills its gap then.
                    logger.warning("ssubscribe %s failed (%s); will retry", channel, exc)
                    self._unplace(channel, moved=False)
                return
            classic = self._classic
            if classic is not None and self._classic_up:
                try:
                    await classic.pubsub.subscribe(channel)
                    classic.channels.add(channel)
                except Exception:
                    # The read loop notices the broken connection and re-subscribes everything.
                    logger.warning("subscribe %s failed; will resubscribe on reconnect", channel)

    async def unsubscribe(self, channel: str) -> None:
        async with self._lock:
            if self._handlers.pop(channel, None) is None:
                return
            self._on_resubscribed.pop(channel, None)
            if channel in self._sharded_wanted:
                self._sharded_wanted.discard(channel)
                self._unplaced.pop(channel, None)
                link = self._placement.pop(channel, None)
                if link is not None:
                    link.channels.discard(channel)
                    link.leaving.add(channel)
                    try:
                        await link.send("SUNSUBSCRIBE", channel)
                    except Exception:
                        logger.warning("sunsubscribe %s failed", channel)
                    if not link.channels:
                        await self._drop_shard(link)
                self._update_connected()
                return
            classic = self._classic
            if classic is not None:
                classic.channels.discard(channel)
                if self._classic_up:
                    try:
                        await classic.pubsub.unsubscribe(channel)
                    except Exception:
                        logger.warning("unsubscribe %s failed", channel)

    # -- the classic link ------------------------------------------------------------------

    def _link_client(self, host: str, port: int) -> Redis:
        """A plain client to one cluster node, with the cluster client's credentials and TLS.
        No retries of its own: a failure must reach the hub, which re-subscribes and has
        every room fill its gap (a silent reconnect would lose messages unnoticed)."""
        assert isinstance(self._redis, RedisCluster)
        template = self._redis.get_nodes()[0]
        kwargs = dict(template.connection_kwargs)
        for private in ("host", "port", "retry", "health_check_interval", "event_dispatcher"):
            kwargs.pop(private, None)
        pool = ConnectionPool(
            connection_class=template.connection_class,
            host=host,
            port=port,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            **kwargs,
        )
        return Redis.from_pool(pool)  # its aclose() closes the pool's connections too

    async def _classic_client(self) -> tuple[Redis, Redis | None]:
        """The client for the classic link, and the client to close with it (cluster only)."""
        if not self._cluster:
            assert isinstance(self._redis, Redis)
            return self._redis, None
        assert isinstance(self._redis, RedisCluster)
        await self._redis.initialize()
        masters = {(host, port) for _first, _last, host, port in self._slot_owners}
        if not masters:
            nodes = self._redis.get_primaries() or self._redis.get_nodes()
            masters = {(node.host, int(node.port)) for node in nodes}
        host, port = random.choice(sorted(masters))
        client = self._link_client(host, port)
        return client, client

    async def _connect_classic(self) -> None:
        async with self._lock:
            client, own = await self._classic_client()
            link = _Link("classic", sharded=False, pubsub=subscriber(client), client=own)
            channels = [c for c in self._handlers if c not in self._sharded_wanted]
            try:
                # Force the connection now so that a dead Redis is noticed at start. Through
                # PubSub.subscribe: redis-py re-subscribes these itself if it reconnects.
                await link.pubsub.subscribe(*(channels or [IDLE_CHANNEL]))
            except BaseException:
                await link.close()
                raise
            link.channels.update(channels)
            self._classic = link
            self._classic_up = True
            self._update_connected()

    async def _close_classic(self) -> None:
        self._classic_up = False
        self._update_connected()
        link, self._classic = self._classic, None
        if link is not None:
            await link.close()

    async def _classic_loop(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            try:
                if self._classic is None:
                    await self._connect_classic()
                    self.reconnects += 1
                    backoff = BACKOFF_MIN_S
                    logger.info("pub/sub reconnected; %d channels", len(self._handlers))
                    await self._resync_all()
                    continue
                await self._read(self._classic)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                logger.warning("pub/sub connection lost (%s); retrying in %.2fs", exc, backoff)
                await self._close_classic()
                if self._cluster:
                    await self._refresh_slot_map()
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _resync_all(self) -> None:
        if self._on_reconnect is not None:
            await self._on_reconnect()

    # -- reading -----------------------------------------------------------------------------

    async def _read(self, link: _Link) -> None:
        """Read ``link`` until it fails (raises): dispatch messages, PING when silent."""
        loop = asyncio.get_running_loop()
        last_heard = loop.time()
        ping_sent: float | None = None
        while True:
            message = await link.pubsub.get_message(timeout=READ_WAIT_S)
            now = loop.time()
            if message is not None:
                last_heard, ping_sent = now, None
            elif ping_sent is not None and now - ping_sent > PONG_TIMEOUT_S:
                self.half_open_detected += 1
                raise HalfOpenConnection(f"no PONG in {PONG_TIMEOUT_S:.1f}s")
            elif ping_sent is None and now - last_heard > SILENCE_BEFORE_PING_S:
                async with self._lock:
                    await link.send("PING")
                ping_sent = now
            if message is None:
                continue
            kind = message.get("type")
            if kind in ("message", "smessage"):
                self.messages += 1
                self._dispatch(message["channel"], message["data"])
            elif kind == "sunsubscribe":
                self._on_sunsubscribe(link, str(message["channel"]))

    def _dispatch(self, channel: str, data: str) -> None:
        handler = self._handlers.get(channel)
        if handler is None:
            return
        try:
            handler(data)
        except Exception:
            logger.exception("handler for %s failed", channel)

    # -- sharded links (Redis Cluster 7+) ------------------------------------------------------

    def _owner(self, channel: str, *, fresh: bool) -> tuple[str, int]:
        """``(host, port)`` of the master serving ``channel``'s slot: from the hub's own slot
        map just read (``fresh``, after a failure), else from the cluster client's, which its
        commands keep current (MOVED answers patch it). Raises if no master serves it."""
        assert isinstance(self._redis, RedisCluster)
        if fresh and self._slot_owners:
            slot = self._redis.keyslot(channel)
            for first, last, host, port in self._slot_owners:
                if first <= slot <= last:
                    return host, port
            raise LookupError(f"no master serves slot {slot}")
        node = self._redis.get_node_from_key(channel)
        return node.host, int(node.port)

    async def _place(self, channel: str, *, fresh: bool = False) -> None:
        """SSUBSCRIBE ``channel`` on the master that holds its slot (caller holds the lock)."""
        host, port = self._owner(channel, fresh=fresh)
        name = f"{host}:{port}"
        link = self._shards.get(name)
        if link is not None and fresh:
            # The node may have been demoted since the link opened (a fail-over).
            await self._check_master(host, port)
        if link is None:
            link = await self._open_shard(name, host, port)
        await link.send("SSUBSCRIBE", channel)
        link.channels.add(channel)
        link.leaving.discard(channel)
        self._placement[channel] = link
        self._unplaced.pop(channel, None)

    async def _check_master(self, host: str, port: int) -> None:
        """Raise unless ``host:port`` is a master now. A replica accepts SSUBSCRIBE too and even
        passes the master's messages on, but SPUBLISH's answer (how many heard it: the RPC's
        reachability test) counts the master's subscribers only. A slot map read from a node
        that has not heard of a fail-over yet names the old master."""
        checker = self._link_client(host, port)
        try:
            role = await checker.execute_command("ROLE")
        finally:
            await checker.aclose()
        if not role or str(role[0]) != "master":
            raise NotMaster(f"{host}:{port} is no master ({role[0] if role else '?'})")

    async def _open_shard(self, name: str, host: str, port: int) -> _Link:
        await self._check_master(host, port)
        client = self._link_client(host, port)
        link = _Link(name, sharded=True, pubsub=subscriber(client), client=client)
        try:
            await link.send("PING")  # connect now: a dead master fails here, not in the loop
        except BaseException:
            await link.close()
            raise
        link.task = asyncio.get_running_loop().create_task(
            self._shard_loop(link), name=f"hub:{name}"
        )
        self._shards[name] = link
        return link

    async def _shard_loop(self, link: _Link) -> None:
        try:
            await self._read(link)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.errors += 1
            logger.warning("shard pub/sub link %s lost (%s); placing its channels again",
                           link.name, exc)  # fmt: skip
            async with self._lock:
                if self._shards.get(link.name) is link:
                    del self._shards[link.name]
                for channel in list(link.channels):
                    if self._placement.get(channel) is link:
                        del self._placement[channel]
                        self._unplace(channel, moved=False)
                link.channels.clear()
            await link.close()

    def _on_sunsubscribe(self, link: _Link, channel: str) -> None:
        if channel in link.leaving:
            link.leaving.discard(channel)
            return
        if channel not in link.channels:
            return
        # Not asked for: Redis dropped the subscription because the slot moved away.
        link.channels.discard(channel)
        if self._placement.get(channel) is link:
            del self._placement[channel]
            self._unplace(channel, moved=True)

    def _unplace(self, channel: str, *, moved: bool) -> None:
        """``channel`` waits for the placer (with its reason: moved alone, or a lost link)."""
        if channel not in self._sharded_wanted:
            return
        self._unplaced[channel] = self._unplaced.get(channel, True) and moved
        self._update_connected()
        if self._stopping:
            return
        if self._placer is None or self._placer.done():
            self._placer = asyncio.get_running_loop().create_task(
                self._place_loop(), name="hub:place"
            )

    async def _place_loop(self) -> None:
        """Place every waiting sharded channel from a fresh slot map, with backoff; then have
        the rooms fill what pub/sub lost meanwhile. Ends only once nothing waits: a channel
        unplaced while it runs is placed by this same loop."""
        backoff = BACKOFF_MIN_S
        while True:
            try:
                await self._place_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("placing sharded channels failed; retrying")
            # No await between this check and the return: nothing can be unplaced unseen.
            if not self._unplaced:
                return
            await asyncio.sleep(backoff)
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _place_pass(self) -> None:
        await self._refresh_slot_map()
        lost_link = False
        moved_alone: list[str] = []
        async with self._lock:
            # Links left without channels (every one moved away, their node perhaps demoted)
            # go first: a placement must not reuse one unchecked.
            for link in list(self._shards.values()):
                if not link.channels:
                    await self._drop_shard(link)
            unreachable: set[str] = set()  # masters that failed this pass: try no more
            for channel, moved in list(self._unplaced.items()):
                assert isinstance(self._redis, RedisCluster)
                master = ""
                try:
                    # Raises while no master serves the slot (mid fail-over).
                    master = "{}:{}".format(*self._owner(channel, fresh=True))
                    if master in unreachable:
                        continue
                    await self._place(channel, fresh=True)
                except Exception as exc:
                    unreachable.add(master)
                    logger.warning("placing %s on %s failed (%s)", channel, master, exc)
                    continue
                if moved:
                    self.slot_moves += 1
                    moved_alone.append(channel)
                    logger.info("%s: its slot moved; subscribed again on %s", channel, master)
                else:
                    lost_link = True
            # Links left without channels (every one moved elsewhere) go.
            for link in list(self._shards.values()):
                if not link.channels:
                    await self._drop_shard(link)
            self._update_connected()
        for channel in moved_alone:
            callback = self._on_resubscribed.get(channel)
            if callback is not None:
                try:
                    callback()
                except Exception:
                    logger.exception("resubscribe callback of %s failed", channel)
        if lost_link:
            self.reconnects += 1
            logger.info("sharded pub/sub placed again; rooms fill their gaps")
            await self._resync_all()

    async def _drop_shard(self, link: _Link) -> None:
        if self._shards.get(link.name) is link:
            del self._shards[link.name]
        task = link.task
        if task is not None and task is not asyncio.current_task():
            await cancel_and_wait(task)
        await link.close()

    async def _refresh_slot_map(self) -> None:
        """Read CLUSTER SLOTS from the first node that answers, over a connection of our own.
        Not ``nodes_manager.initialize()``: that replaces the shared cluster client's node
        objects and disconnects the old ones, cutting every command in flight on them."""
        assert isinstance(self._redis, RedisCluster)
        known = {(node.host, int(node.port)) for node in self._redis.get_nodes()}
        known |= {
            (node.host, int(node.port)) for node in self._redis.nodes_manager.startup_nodes.values()
        }
        candidates = list(known)
        random.shuffle(candidates)
        for host, port in candidates:
            client = self._link_client(host, port)
            try:
                # "CLUSTER", "SLOTS" as two words: redis-py leaves the reply raw.
                reply = await client.execute_command("CLUSTER", "SLOTS")
            except Exception as exc:
                logger.debug("CLUSTER SLOTS from %s:%s failed (%s)", host, port, exc)
                continue
            finally:
                await client.aclose()
            self._slot_owners = sorted(
                (int(entry[0]), int(entry[1]), str(entry[2][0]) or host, int(entry[2][1]))
                for entry in reply
            )
            return
        logger.warning("no node of the cluster answered CLUSTER SLOTS")

    def _update_connected(self) -> None:
        if self._classic_up and not self._unplaced:
            self.connected.set()
        else:
            self.connected.clear()
