"""A room's hot state as an LWW map: the recent window of messages with edits and deletes
applied, and the room's metadata. No I/O: the room server persists the deltas.

Keys: ``msg:<id>`` -> {"user", "body", "seq"} (an edit overwrites it with a later timestamp);
``del:<id>`` -> true, a key of its own that nothing ever unsets, so a delete is never undone by
an edit that arrives late or carries a later clock; ``meta:<name>`` -> room metadata.
"""

from __future__ import annotations

import contextlib
from typing import Any

from .crdt import ClockDriftError, HybridLogicalClock, LWWMap, Timestamp

Event = dict[str, Any]


class RoomState:
    def __init__(self, node: str, window: int) -> None:
        self.map = LWWMap()
        self.clock = HybridLogicalClock(node)
        self.window = window

    def delta_for(self, event: Event, ts: Timestamp) -> LWWMap:
        """The delta that ``event`` (with its seq and id) makes, at time ``ts``. Pure."""
        delta = LWWMap()
        kind = event["type"]
        if kind == "message":
            value = {"user": event["user"], "body": event["body"], "seq": event["seq"]}
            if event.get("author") is not None:
                value["author"] = event["author"]  # who may change it (room_server)
            delta.set(f"msg:{event['id']}", value, ts)
        elif kind == "edit":
            original = self.map.get(f"msg:{event['id']}")
            if isinstance(original, dict):
                delta.set(f"msg:{event['id']}", {**original, "body": event["body"]}, ts)
        elif kind == "delete":
            delta.set(f"del:{event['id']}", True, ts)
        return delta

    def apply(self, delta: LWWMap) -> None:
        self.map.merge(delta)
        self._observe(delta)

    def _observe(self, delta: LWWMap) -> None:
        latest = delta.max_timestamp()
        if latest is not None:
            # A stored timestamp far in the future (a node with a bad clock) is merged but not
            # adopted by our clock: the map stays convergent, our clock stays sane.
            with contextlib.suppress(ClockDriftError):
                self.clock.observe(latest)

    def set_meta(self, name: str, value: Any) -> LWWMap:
        delta = self.map.set(f"meta:{name}", value, self.clock.now())
        return delta

    def message(self, message_id: str) -> dict[str, Any] | None:
        """The message as the room shows it now, or None if it is not in the window."""
        value = self.map.get(f"msg:{message_id}")
        if not isinstance(value, dict):
            return None
        return {**value, "deleted": f"del:{message_id}" in self.map}

    def compact(self, last_seq: int) -> None:
        """Drop messages that left the window (and their delete markers)."""
        cutoff = last_seq - self.window
        if cutoff <= 0:
            return
        old_ids = {
            key[4:]
            for key, value in self.map.items("msg:")
            if isinstance(value, dict)
            and isinstance(value.get("seq"), int)
            and int(str(value["seq"])) <= cutoff
        }
        kept = LWWMap(
            {
                key: entry
                for key, entry in self.map.entries()
                if not (key.startswith(("msg:", "del:")) and key[4:] in old_ids)
            }
        )
        self.map = kept

    def load(self, snapshot: LWWMap) -> None:
        self.map = snapshot.copy()
        self._observe(snapshot)

    def digest(self) -> str:
        return self.map.digest()
