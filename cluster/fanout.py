"""This node's side of a room: delivery (``delivery.py``) and presence (``presence.py``) of its
local sockets, under one lock per room so that a socket's arrival or departure is one step.

The runtime calls only this facade; the two halves have different lifetimes and jobs
(delivery: per room, while it has sockets; presence: also the node's entries in Redis, which
outlive a socket's failed write and are repaired from the node's sockets).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from .delivery import Delivery, DeliveryRoom, Listener, RoomLocks
from .hub import PubSubHub
from .keys import PRESENCE_SEP
from .log import RoomLog
from .presence import Presence
from .stats import NodeStats

__all__ = ["SEP", "Attachment", "Fanout", "Listener"]

SEP = PRESENCE_SEP  # for callers that still split fields themselves; prefer keys.parse_*


@dataclass(frozen=True)
class Attachment:
    last_seq: int
    users: list[str]


class Fanout:
    def __init__(
        self,
        redis: Redis,
        hub: PubSubHub,
        log: RoomLog,
        node: str,
        *,
        is_live: Callable[[str], bool],
        repair_interval_s: float = 2.0,
        stats: NodeStats | None = None,
    ) -> None:
        self._locks = RoomLocks()
        self.delivery = Delivery(redis, hub, log, node, on_presence=self._on_presence, stats=stats)
        self.presence = Presence(
            redis,
            node,
            is_live=is_live,
            locks=self._locks,
            broadcast=self.delivery.broadcast,
            repair_interval_s=repair_interval_s,
        )

    # -- what metrics read ------------------------------------------------------------------

    @property
    def rooms(self) -> dict[str, DeliveryRoom]:
        return self.delivery.rooms

    @property
    def connections(self) -> int:
        return self.delivery.connections

    @property
    def delivered(self) -> int:
        return self.delivery.delivered

    @property
    def gaps_filled(self) -> int:
        return self.delivery.gaps_filled

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the periodic presence repair (stopped by ``stop``)."""
        self.presence.start()

    async def stop(self) -> None:
        await self.presence.stop()
        await self.delivery.stop()

    async def clear_stale_presence(self) -> int:
        return await self.presence.clear_stale()

    # -- sockets ------------------------------------------------------------------------------

    async def attach(self, slug: str, listener: Listener) -> Attachment:
        """Start delivering ``slug``'s events with seq > the returned last_seq to ``listener``."""
        async with self._locks.hold(slug):
            room = await self.delivery.open(slug)
            try:
                await self.presence.open(slug)
                # Counted before the listener joins, in the same step: it learns of itself
                # from presence_state, not a diff, and nothing can cancel in between.
                announce = self.presence.arrive(slug, listener.user)
                room.listeners.add(listener)
                attachment = Attachment(room.last_seq, self.presence.users(slug))
                await self.presence.write(slug, listener.user, announce=announce)
            except BaseException:
                # Failed or cancelled half-way: nothing of this socket may stay behind (a
                # caller whose attach failed never detaches).
                if listener in room.listeners:
                    room.listeners.discard(listener)
                    self.presence.leave(slug, listener.user)
                if not room.listeners:
                    self.presence.close(slug)
                    await self.delivery.close(slug)
                raise
            return attachment

    async def detach(self, slug: str, listener: Listener) -> None:
        async with self._locks.hold(slug):
            room = self.delivery.rooms.get(slug)
            if room is None or listener not in room.listeners:
                return
            room.listeners.discard(listener)
            last = self.presence.leave(slug, listener.user)
            try:
                await self.presence.write(slug, listener.user, announce=last)
            finally:
                if not room.listeners:
                    self.presence.close(slug)
                    await self.delivery.close(slug)

    async def typing(self, slug: str, user: str) -> None:
        await self.delivery.typing(slug, user)

    def close_all(self, code: int) -> None:
        """Ask every local socket to close (drain): they resume elsewhere with ``after=``."""
        self.delivery.close_all(code)

    async def online(self, slugs: list[str]) -> dict[str, list[str]]:
        return await self.presence.online(slugs)

    # -- the cluster's news -----------------------------------------------------------------

    async def resync(self) -> None:
        """After a pub/sub reconnect: fill every room's gap; Redis may have lost our
        presence (a restart) and peers our announcements: write and announce it again."""
        self.delivery.resync()
        self.presence.rejoin()

    def rejoin(self) -> None:
        """We were presumed dead and re-join: peers deleted our presence; write it again."""
        self.presence.rejoin()

    async def on_nodes_left(self, left: set[str]) -> None:
        await self.presence.on_nodes_left(left)

    def on_nodes_joined(self, joined: set[str]) -> None:
        self.presence.on_nodes_joined(joined)

    def _on_presence(self, slug: str, data: str) -> None:
        self.presence.on_message(slug, data)
