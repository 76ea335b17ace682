"""A room's CRDT state in Redis: a stream of deltas, compacted by fenced snapshots.

Deltas are written by the append script together with their event (one atomic step); a snapshot
replaces every delta before it. Rebuilding = the last snapshot merged with every delta after it,
which is exactly the state the writer had, since merge is idempotent and order-free.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from redis.asyncio import Redis

from . import scripts
from .crdt import LWWMap
from .keys import RoomKeys


@dataclass(frozen=True)
class StoredState:
    state: LWWMap
    upto_seq: int  # the highest seq whose delta is included
    deltas: int  # deltas merged on top of the snapshot


class StateStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._snapshot = redis.register_script(scripts.WRITE_SNAPSHOT)

    async def write_snapshot(
        self, slug: str, *, node: str, epoch: int, state: LWWMap, upto_seq: int
    ) -> bool:
        k = RoomKeys(slug)
        written = await self._snapshot(
            keys=[k.lease, k.state], args=[node, str(epoch), state.to_json_text(), str(upto_seq)]
        )
        return bool(written)

    async def read(self, slug: str) -> StoredState:
        entries = await self._redis.xrange(RoomKeys(slug).state)
        state = LWWMap()
        upto = 0
        deltas = 0
        start = 0
        for i, (_, fields) in enumerate(entries):
            if "snap" in fields:
                start = i
        for _, fields in entries[start:]:
            if "snap" in fields:
                state = LWWMap.from_json_text(fields["snap"])
            else:
                state.merge(LWWMap.from_json_text(fields["d"]))
                deltas += 1
            upto = max(upto, int(fields.get("s", 0)))
        return StoredState(state, upto, deltas)


def new_marker(*texts: str) -> str:
    """A token that appears in none of ``texts`` (and is safe in a Lua pattern)."""
    while True:
        marker = "SEQ" + secrets.token_hex(8)
        if not any(marker in text for text in texts):
            return marker


def delta_template(delta: LWWMap, marker: str) -> str:
    """Serialise a delta built with ``marker`` standing for the not-yet-known seq: the quoted
    marker (a seq value) becomes a bare token, so the script's substitution yields a number."""
    return delta.to_json_text().replace(f'"{marker}"', marker)
