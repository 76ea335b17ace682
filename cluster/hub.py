"""One pub/sub connection per node, shared by every room, the RPC inbox and membership.

Pub/sub is at-most-once: whatever was published while the connection was down is gone. So the
hub reconnects with backoff, re-subscribes every channel, and then tells its listeners, who fill
their gaps from the durable log.

A connection can also die without closing (a half-open TCP connection, a black-holed network):
reads then simply time out and the node would hear nothing, forever. So when the connection has
been silent for a while the hub sends a PING on it and treats a missing PONG as a lost connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from .tasks import cancel_and_wait

logger = logging.getLogger("cluster.hub")

Handler = Callable[[str], None]

READ_WAIT_S = 0.5  # one wait for a message; bounds how late a health check can start
SILENCE_BEFORE_PING_S = 2.0  # no message for this long: ask the server if it is still there
PONG_TIMEOUT_S = 3.0  # no answer to that PING for this long: the connection is dead


class HalfOpenConnection(ConnectionError):
    """The pub/sub connection stopped answering PINGs."""


class PubSubHub:
    def __init__(
        self, redis: Redis, *, on_reconnect: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self._redis = redis
        self._handlers: dict[str, Handler] = {}
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._on_reconnect = on_reconnect
        self._lock = asyncio.Lock()
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.errors = 0  # connections lost (or never made): a Redis error each
        self.messages = 0
        self.half_open_detected = 0

    async def start(self) -> None:
        await self._connect()
        self._reader = asyncio.get_running_loop().create_task(self._read_loop(), name="hub")

    async def stop(self) -> None:
        await cancel_and_wait(self._reader)
        self._reader = None
        await self._close()

    async def subscribe(self, channel: str, handler: Handler) -> None:
        async with self._lock:
            self._handlers[channel] = handler
            if self._pubsub is not None and self.connected.is_set():
                try:
                    await self._pubsub.subscribe(channel)
                except Exception:
                    # The read loop notices the broken connection and re-subscribes everything.
                    logger.warning("subscribe %s failed; will resubscribe on reconnect", channel)

    async def unsubscribe(self, channel: str) -> None:
        async with self._lock:
            if self._handlers.pop(channel, None) is None:
                return
            if self._pubsub is not None and self.connected.is_set():
                try:
                    await self._pubsub.unsubscribe(channel)
                except Exception:
                    logger.warning("unsubscribe %s failed", channel)

    async def _connect(self) -> None:
        async with self._lock:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            channels = list(self._handlers)
            if channels:
                await pubsub.subscribe(*channels)
            else:
                # Force the connection now so that a dead Redis is noticed at start.
                await pubsub.subscribe("chat:__hub__")
            self._pubsub = pubsub
            self.connected.set()

    async def _close(self) -> None:
        self.connected.clear()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except Exception:
                logger.debug("closing a broken pubsub connection failed", exc_info=True)

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.05
        last_heard = loop.time()
        ping_sent: float | None = None
        while True:
            pubsub = self._pubsub
            try:
                if pubsub is None:
                    await self._connect()
                    self.reconnects += 1
                    backoff = 0.05
                    last_heard, ping_sent = loop.time(), None
                    logger.info("pub/sub reconnected; %d channels", len(self._handlers))
                    if self._on_reconnect is not None:
                        await self._on_reconnect()
                    continue
                message = await pubsub.get_message(timeout=READ_WAIT_S)
                now = loop.time()
                if message is not None:
                    last_heard, ping_sent = now, None
                elif ping_sent is not None and now - ping_sent > PONG_TIMEOUT_S:
                    self.half_open_detected += 1
                    raise HalfOpenConnection(f"no PONG in {PONG_TIMEOUT_S:.1f}s")
                elif ping_sent is None and now - last_heard > SILENCE_BEFORE_PING_S:
                    async with self._lock:
                        await pubsub.ping()
                    ping_sent = now
                if message is None or message.get("type") != "message":
                    continue
                self.messages += 1
                self._dispatch(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                logger.warning("pub/sub connection lost (%s); retrying in %.2fs", exc, backoff)
                await self._close()
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)

    def _dispatch(self, channel: str, data: str) -> None:
        handler = self._handlers.get(channel)
        if handler is None:
            return
        try:
            handler(data)
        except Exception:
            logger.exception("handler for %s failed", channel)
