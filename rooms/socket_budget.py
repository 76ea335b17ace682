"""The byte budget of one socket (guarantee 10): what the server buffers for it may not grow
past ``CHAT_SOCKET_BUFFER_BYTES``.

The consumer writes a frame only when the transport's backlog leaves room for it under the high
water mark (half the budget); otherwise it waits until the client has read the backlog down to
the low water mark (a quarter). A client that reads nothing for ``STALL_S`` while we wait has
stopped: ``SocketStalled``, and the consumer closes it with 1013. The other half of the budget
covers the frames queued in the consumer (a quarter) and one replay page (a quarter).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from chatsite.daphne_compat import TRANSPORT_EXTENSION

STALL_S = 5.0  # no progress at all for this long while over the high water mark: stopped
POLL_S = 0.05  # how often a waiting socket looks at its transport's backlog, at most
FIRST_POLL_S = 0.002  # a client that reads at once is not held up by the first look


class Backlog(Protocol):
    def buffered(self) -> int: ...


def kernel_unsent(backlog: Any) -> int:
    """Bytes the kernel still holds unsent for the socket (-1: not known). A slow reader
    drains the kernel's buffer first: on loopback that buffer grows to megabytes, and the
    socket is writable again only once a third of it is free, so the server's own backlog can
    stand still for seconds while the client reads steadily. Progress counts here too."""
    probe = getattr(backlog, "kernel_unsent", None)
    return int(probe()) if probe is not None else -1


class SocketStalled(Exception):
    def __init__(self, buffered: int) -> None:
        super().__init__(f"{buffered} bytes unread for {STALL_S}s")
        self.buffered = buffered


class SendBudget:
    def __init__(self, limit: int, backlog: Backlog | None) -> None:
        self.limit = limit
        self.high_water = limit // 2
        self.low_water = limit // 4
        self.quarter = limit // 4
        self._backlog = backlog

    @classmethod
    def for_scope(cls, scope: dict[str, Any], limit: int) -> SendBudget:
        """Without a probe (a test communicator, another server) only what we queue counts."""
        probe = (scope.get("extensions") or {}).get(TRANSPORT_EXTENSION)
        return cls(limit, probe if hasattr(probe, "buffered") else None)

    def buffered(self) -> int:
        return self._backlog.buffered() if self._backlog is not None else 0

    def fits(self, size: int) -> bool:
        """May ``size`` more bytes be written now without waiting?"""
        return self.buffered() + size <= self.high_water

    def over(self, size: int) -> bool:
        """Would ``size`` more bytes take the socket past its whole budget?"""
        return self.buffered() + size > self.limit

    async def wait_for_room(self, size: int, *, give_up: Callable[[], bool]) -> bool:
        """Return once ``size`` bytes may be written (True), or ``give_up()`` says stop
        (False). Raises SocketStalled when the client reads nothing for STALL_S."""
        if self.fits(size):
            return True
        loop = asyncio.get_running_loop()
        lowest = self.buffered()
        kernel_lowest = kernel_unsent(self._backlog)
        deadline = loop.time() + STALL_S
        delay = FIRST_POLL_S
        while True:
            if give_up():
                return False
            now = self.buffered()
            if now <= self.low_water:
                return True
            kernel = kernel_unsent(self._backlog)
            if now < lowest or 0 <= kernel < kernel_lowest:  # the client reads, however slowly
                lowest = min(lowest, now)
                kernel_lowest = kernel
                deadline = loop.time() + STALL_S
            elif kernel > kernel_lowest:
                kernel_lowest = kernel  # we wrote more into it: measure from the new level
            elif loop.time() >= deadline:
                raise SocketStalled(now)
            await asyncio.sleep(delay)
            delay = min(POLL_S, delay * 2)
