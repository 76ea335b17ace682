"""A value computed once per object and found again by the object's identity.

The fan-out hands one event's objects (its frame dict, then its JSON text) to every local socket
of a room in a row: the frame is encoded and the text framed once per process, not once per
socket. Identity rather than equality: comparing would cost as much as computing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ByIdentity(Generic[K, V]):
    """``cache(obj)`` is ``compute(obj)``, computed once for the last ``keep`` objects seen.
    Each entry holds its object, so an id is never reused while its entry lives."""

    __slots__ = ("_compute", "_entries", "_keep", "_last")

    def __init__(self, compute: Callable[[K], V], keep: int) -> None:
        self._compute = compute
        self._keep = keep
        self._entries: OrderedDict[int, tuple[K, V]] = OrderedDict()
        self._last: tuple[K, V] | None = None  # the common case: the same object again

    def get(self, obj: K) -> V:
        last = self._last
        if last is not None and last[0] is obj:
            return last[1]
        entry = self._entries.get(id(obj))
        if entry is None or entry[0] is not obj:
            entry = (obj, self._compute(obj))
            self._entries[id(obj)] = entry
            if len(self._entries) > self._keep:
                self._entries.popitem(last=False)
        self._last = entry
        return entry[1]
