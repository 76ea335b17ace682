"""A sliding-window rate limit per key, kept by the room's owner (one owner, one counter)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class SlidingWindowLimiter:
    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window = window_s
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    def allow(self, key: str) -> bool:
        """Count one hit for ``key`` if it has room; False (nothing counted) if not."""
        if not self.has_room(key):
            return False
        self._hits[key].append(self._clock())
        return True

    def has_room(self, key: str) -> bool:
        """Whether one more hit for ``key`` is allowed now (counts nothing): a command checked
        against several limits spends from none of them when one refuses."""
        now = self._clock()
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self._window:
            hits.popleft()
        return len(hits) < self._limit

    def forget_idle(self) -> None:
        now = self._clock()
        for key in [k for k, h in self._hits.items() if not h or h[-1] <= now - self._window]:
            del self._hits[key]
