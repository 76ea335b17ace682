"""Frames waiting for one socket, bounded in count and in bytes.

Frames are encoded once per process, not once per socket: the fan-out hands the same dict to
every local socket of a room, so the encoding of the last few frames is remembered by identity.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from chatsite.by_identity import ByIdentity

Frame = dict[str, Any]
_ENCODED_KEEP = 64


def _text_and_size(frame: Frame) -> tuple[str, int]:
    text = json.dumps(frame, ensure_ascii=False)
    return text, len(text) if text.isascii() else len(text.encode())


# The frame's JSON text and its size in UTF-8 bytes (what the transport will hold).
encode = ByIdentity(_text_and_size, keep=_ENCODED_KEEP).get


class Outbox:
    def __init__(self, *, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.bytes = 0
        # Made on the first offer and dropped when emptied: an empty deque costs ~600 bytes,
        # and most sockets' outboxes are empty nearly all the time.
        self._items: deque[tuple[Frame, str, int]] | None = None

    def offer(self, frame: Frame) -> bool:
        """Queue ``frame``; False (not queued) when that would pass either bound."""
        if self._items is not None and len(self._items) >= self.max_frames:
            return False
        text, size = encode(frame)
        if self.bytes + size > self.max_bytes:
            return False
        if self._items is None:
            self._items = deque()
        self._items.append((frame, text, size))
        self.bytes += size
        return True

    def pop(self) -> tuple[Frame, str, int] | None:
        if not self._items:
            return None
        item = self._items.popleft()
        self.bytes -= item[2]
        if not self._items:
            self._items = None
        return item

    def clear(self) -> None:
        self._items = None
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items) if self._items is not None else 0
