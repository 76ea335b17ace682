"""Room state as a delta-state CRDT: a hybrid logical clock, an LWW register and an LWW map.

Pure data structures, no I/O: the caller moves deltas through Redis and feeds the clock.

Conflict semantics (public API, relied on by hand-off and by tests):

* Every write carries a `Timestamp` from a `HybridLogicalClock`. Timestamps are totally ordered
  across nodes: (wall_ms, counter, node), the node id breaking ties, so two replicas always agree
  on which of two writes is later (unlike DeltaCrdt's per-node clocks).
* The later write wins, whatever the order deltas arrive in. A removal is a write of a tombstone,
  so a delete is never undone by an edit with a lower timestamp that arrives after it.
* Equal timestamps only arise when one write is delivered twice. Should two different entries ever
  share a timestamp, the tombstone wins, then the greater canonical JSON value, so every replica
  still picks the same winner.
* `merge` is commutative, associative and idempotent: replicas that have received the same set of
  deltas, in any order, with duplicates, hold equal state and equal `digest()`s.

Nothing here is thread-safe; each structure belongs to one event loop.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeAlias, TypeVar

JSONValue: TypeAlias = bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None

# Widths of the string form: 18 digits of milliseconds last until the year 31 million; 10 digits
# of counter are more events than one millisecond can hold.
_WALL_DIGITS: Final = 18
_COUNTER_DIGITS: Final = 10
MAX_WALL_MS: Final = 10**_WALL_DIGITS - 1
MAX_COUNTER: Final = 10**_COUNTER_DIGITS - 1
# A remote clock further ahead than this is treated as broken rather than followed.
DEFAULT_MAX_DRIFT_MS: Final = 60_000
JSON_FORMAT_VERSION: Final = 1

_TIMESTAMP_RE: Final = re.compile(r"([0-9]{18})-([0-9]{10})-(.*)", re.DOTALL)


def stable_json(value: object) -> str:
    """Canonical JSON: sorted keys, no spaces, ASCII only (safe for any Redis client), no NaN.

    Raises TypeError or ValueError for values JSON cannot represent.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def wall_clock_ms() -> int:
    """Milliseconds since the epoch: the default physical clock of `HybridLogicalClock`."""
    return time.time_ns() // 1_000_000


_VALID_NODES: set[str] = set()  # node ids already checked: a snapshot repeats a few thousand times


def _check_node(node: object) -> str:
    if not isinstance(node, str):
        raise ValueError(f"node id must be a str, not {type(node).__name__}")
    if node in _VALID_NODES:
        return node
    if any(ch.isspace() or not ch.isprintable() for ch in node):
        raise ValueError(f"node id {node!r} contains whitespace or unprintable characters")
    if len(_VALID_NODES) < 10_000:
        _VALID_NODES.add(node)
    return node


def _check_int(name: str, value: object, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise ValueError(f"{name}={value} is outside 0..{maximum}")
    return value


@dataclass(frozen=True, order=True, slots=True)
class Timestamp:
    """A hybrid logical timestamp; ordered by (wall_ms, counter, node)."""

    wall_ms: int
    counter: int
    node: str

    def __post_init__(self) -> None:
        _check_int("wall_ms", self.wall_ms, MAX_WALL_MS)
        _check_int("counter", self.counter, MAX_COUNTER)
        _check_node(self.node)

    @classmethod
    def floor(cls, wall_ms: int) -> Timestamp:
        """The smallest timestamp at `wall_ms`: a bound for `delta_since`/`prune_tombstones`."""
        return cls(wall_ms, 0, "")

    def to_string(self) -> str:
        """Zero-padded "WALL-COUNTER-NODE"; strings sort exactly like the timestamps."""
        return f"{self.wall_ms:0{_WALL_DIGITS}d}-{self.counter:0{_COUNTER_DIGITS}d}-{self.node}"

    @classmethod
    def from_string(cls, text: object) -> Timestamp:
        if not isinstance(text, str):
            raise ValueError(f"timestamp must be a str, not {type(text).__name__}")
        match = _TIMESTAMP_RE.fullmatch(text)
        if match is None:
            raise ValueError(f"malformed timestamp {text!r}: expected 18 digits-10 digits-node")
        return cls(int(match[1]), int(match[2]), match[3])

    def to_list(self) -> list[JSONValue]:
        return [self.wall_ms, self.counter, self.node]

    @classmethod
    def from_list(cls, data: object) -> Timestamp:
        if not isinstance(data, (list, tuple)) or len(data) != 3:
            raise ValueError(f"timestamp must be a [wall_ms, counter, node] list, not {data!r}")
        return cls(data[0], data[1], data[2])

    def __str__(self) -> str:
        return self.to_string()


class ClockDriftError(ValueError):
    """A remote timestamp is too far ahead of the local wall clock to be trusted."""


class HybridLogicalClock:
    """Hybrid logical clock (Kulkarni et al., 2014) for one node.

    `now()` is strictly greater than every timestamp this clock issued or observed, even when the
    wall clock stands still or goes backwards. A node restarting under the same id must first
    `observe()` the timestamps it wrote before (e.g. while resyncing a room), or it could reissue
    one of them after its wall clock stepped back.
    """

    def __init__(
        self,
        node: str,
        now_ms: Callable[[], int] = wall_clock_ms,
        *,
        max_drift_ms: int = DEFAULT_MAX_DRIFT_MS,
    ) -> None:
        if not _check_node(node):
            raise ValueError("node id must not be empty")
        if max_drift_ms < 0:
            raise ValueError(f"max_drift_ms={max_drift_ms} must not be negative")
        self._node = node
        self._now_ms = now_ms
        self.max_drift_ms = max_drift_ms
        self._wall = 0
        self._counter = 0
        self._last: Timestamp | None = None

    @property
    def node(self) -> str:
        return self._node

    @property
    def last(self) -> Timestamp | None:
        """The last timestamp issued, greater than all seen so far (None before the first)."""
        return self._last

    def now(self) -> Timestamp:
        """A new timestamp for a local event."""
        wall = max(self._wall, self._now_ms())
        counter = self._counter + 1 if wall == self._wall else 0
        return self._issue(wall, counter)

    def observe(self, remote: Timestamp) -> Timestamp:
        """Merge a remote timestamp; returns the timestamp of the receive event (> `remote`).

        Raises ClockDriftError (a ValueError), leaving the clock untouched, if `remote` is more
        than `max_drift_ms` ahead of the local wall clock.
        """
        physical = self._now_ms()
        if remote.wall_ms - physical > self.max_drift_ms:
            raise ClockDriftError(
                f"timestamp {remote} from node {remote.node!r} is {remote.wall_ms - physical} ms "
                f"ahead of the local clock (limit {self.max_drift_ms} ms)"
            )
        wall = max(self._wall, remote.wall_ms, physical)
        if wall == self._wall == remote.wall_ms:
            counter = max(self._counter, remote.counter) + 1
        elif wall == self._wall:
            counter = self._counter + 1
        elif wall == remote.wall_ms:
            counter = remote.counter + 1
        else:
            counter = 0
        return self._issue(wall, counter)

    def _issue(self, wall: int, counter: int) -> Timestamp:
        if counter > MAX_COUNTER:
            # Only a hostile remote counter gets here; borrowing a millisecond keeps order.
            wall, counter = wall + 1, 0
        stamp = Timestamp(wall, counter, self._node)  # validates before the state moves
        self._wall, self._counter = wall, counter
        self._last = stamp
        return stamp


class Tombstone(enum.Enum):
    """Marks a removed key; `TOMBSTONE` is the only member."""

    TOMBSTONE = "TOMBSTONE"

    def __repr__(self) -> str:
        return "TOMBSTONE"


TOMBSTONE: Final = Tombstone.TOMBSTONE

T = TypeVar("T")


def _tiebreak(value: object) -> tuple[int, str]:
    """Order of two different values written at one timestamp: tombstone, then greater JSON."""
    if value is TOMBSTONE:
        return (1, "")
    try:
        return (0, stable_json(value))
    except (TypeError, ValueError):
        return (0, repr(value))


def _wins(value: object, ts: Timestamp, other_value: object, other_ts: Timestamp) -> bool:
    """Whether (value, ts) strictly beats (other_value, other_ts) under LWW."""
    if ts != other_ts:
        return ts > other_ts
    if value is other_value:
        return False
    return _tiebreak(value) > _tiebreak(other_value)


@dataclass(frozen=True, slots=True)
class LWWRegister(Generic[T]):
    """An immutable last-writer-wins register; a register is its own delta."""

    value: T
    ts: Timestamp

    def set(self, value: T, ts: Timestamp) -> LWWRegister[T]:
        return self.merge(LWWRegister(value, ts))

    def merge(self, other: LWWRegister[T]) -> LWWRegister[T]:
        """The register holding the later write (commutative, associative, idempotent)."""
        return other if _wins(other.value, other.ts, self.value, self.ts) else self


@dataclass(frozen=True, slots=True, eq=False)
class Entry:
    """One key's state in an `LWWMap`: a JSON value or `TOMBSTONE`, and its timestamp."""

    value: JSONValue | Tombstone
    ts: Timestamp

    def __post_init__(self) -> None:
        if not isinstance(self.ts, Timestamp):
            raise ValueError(f"entry timestamp must be a Timestamp, not {type(self.ts).__name__}")
        if self.value is not TOMBSTONE:
            # A private canonical copy: later mutation by the caller cannot fork replicas.
            object.__setattr__(self, "value", _json_copy(self.value))

    @property
    def deleted(self) -> bool:
        return self.value is TOMBSTONE

    def beats(self, other: Entry) -> bool:
        return _wins(self.value, self.ts, other.value, other.ts)

    def to_json(self) -> list[JSONValue]:
        """[ts] for a tombstone, [ts, value] for a live entry."""
        if self.value is TOMBSTONE:
            return [self.ts.to_string()]
        return [self.ts.to_string(), self.value]

    @classmethod
    def from_json(cls, data: object) -> Entry:
        if not isinstance(data, list) or len(data) not in (1, 2):
            raise ValueError(f"entry must be [timestamp] or [timestamp, value], not {data!r}")
        ts = Timestamp.from_string(data[0])
        return cls(TOMBSTONE if len(data) == 1 else data[1], ts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return self.ts == other.ts and _tiebreak(self.value) == _tiebreak(other.value)

    __hash__ = None  # type: ignore[assignment]


def _json_copy(value: object) -> JSONValue:
    """A canonical deep copy (plain types, dict keys sorted) of a JSON value, or ValueError."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not representable in JSON")
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_copy(item) for item in value]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise ValueError(f"object key {key!r} is not a str")
        return {key: _json_copy(value[key]) for key in sorted(value)}
    raise ValueError(f"{type(value).__name__} {value!r:.40} is not a JSON value")


class LWWMap:
    """A last-writer-wins map from str keys to JSON values, with tombstones; delta-state CRDT.

    Mutators apply locally and return the delta (a map holding only the changed entry) to ship
    to other replicas, which `merge` it. Values are copied canonically on `set`; values handed
    out by `get`/`items` are the stored objects and must not be mutated.
    """

    __slots__ = ("_entries",)

    def __init__(self, entries: Mapping[str, Entry] | None = None) -> None:
        self._entries: dict[str, Entry] = {}
        for key, entry in (entries or {}).items():
            self._put(key, entry)

    # --- mutators -------------------------------------------------------------------------

    def set(self, key: str, value: JSONValue, ts: Timestamp) -> LWWMap:
        """Write `value` at `ts`; returns the delta. Raises ValueError for non-JSON values.

        The delta holds the write even when a later write already hides it: merging it is
        harmless anywhere, and every replica resolves it the same way.
        """
        try:
            entry = Entry(value, ts)
        except ValueError as exc:
            raise ValueError(f"LWWMap.set({key!r}): {exc}") from None
        return self._mutate(key, entry)

    def remove(self, key: str, ts: Timestamp) -> LWWMap:
        """Write a tombstone at `ts` (even for a key this replica never saw); returns the delta."""
        return self._mutate(key, Entry(TOMBSTONE, ts))

    def _mutate(self, key: str, entry: Entry) -> LWWMap:
        if not isinstance(key, str):
            raise ValueError(f"key must be a str, not {type(key).__name__}")
        self._put(key, entry)
        delta = LWWMap()
        delta._entries[key] = entry
        return delta

    def _put(self, key: str, entry: Entry) -> bool:
        current = self._entries.get(key)
        if current is None or entry.beats(current):
            self._entries[key] = entry
            return True
        return False

    def merge(self, other: LWWMap) -> LWWMap:
        """Merge `other` into this map in place, entry by entry.

        Returns the entries of `other` that changed this map (an empty map if none did): what
        is new here, e.g. to compute a presence diff or to forward.
        """
        changed = LWWMap()
        for key, entry in list(other._entries.items()):
            if self._put(key, entry):
                changed._entries[key] = entry
        return changed

    def merged(self, other: LWWMap) -> LWWMap:
        """A new map holding the join of this map and `other`."""
        result = self.copy()
        result.merge(other)
        return result

    def copy(self) -> LWWMap:
        clone = LWWMap()
        clone._entries = dict(self._entries)
        return clone

    def prune_tombstones(self, older_than: Timestamp) -> int:
        """Drop tombstones with a timestamp below `older_than`; returns how many went.

        Only safe once every replica, and every delta still in flight or in a stream, has
        seen those tombstones: a replica that still holds the removed value and later merges
        this map would otherwise bring the value back. Prune snapshots that supersede all
        older deltas, with a bound well behind any replica's clock.
        """
        stale = [k for k, e in self._entries.items() if e.deleted and e.ts < older_than]
        for key in stale:
            del self._entries[key]
        return len(stale)

    # --- reads ----------------------------------------------------------------------------

    def get(self, key: str, default: JSONValue = None) -> JSONValue:
        entry = self._entries.get(key)
        if entry is None or entry.value is TOMBSTONE:
            return default
        return entry.value

    def entry(self, key: str) -> Entry | None:
        """The entry of `key`, tombstone included, or None if this replica never heard of it."""
        return self._entries.get(key)

    def __contains__(self, key: object) -> bool:
        entry = self._entries.get(key) if isinstance(key, str) else None
        return entry is not None and not entry.deleted

    def items(self, prefix: str = "") -> list[tuple[str, JSONValue]]:
        """Live (key, value) pairs, sorted by key, optionally only keys starting with `prefix`."""
        return [
            (key, entry.value)
            for key, entry in self.entries(prefix)
            if entry.value is not TOMBSTONE
        ]

    def keys(self, prefix: str = "") -> list[str]:
        return [key for key, _ in self.items(prefix)]

    def values(self, prefix: str = "") -> list[JSONValue]:
        return [value for _, value in self.items(prefix)]

    def entries(self, prefix: str = "") -> list[tuple[str, Entry]]:
        """All (key, entry) pairs, tombstones included, sorted by key."""
        return sorted(
            ((key, entry) for key, entry in self._entries.items() if key.startswith(prefix)),
            key=lambda item: item[0],
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        """The number of live keys (tombstones not counted)."""
        return sum(1 for entry in self._entries.values() if not entry.deleted)

    def __bool__(self) -> bool:
        """True if the map holds any entry, tombstones included: a removal delta is not empty."""
        return bool(self._entries)

    def max_timestamp(self) -> Timestamp | None:
        """The latest timestamp of any entry, e.g. to `observe()` before writing after a merge."""
        return max((entry.ts for entry in self._entries.values()), default=None)

    def delta_since(self, since: Timestamp | None) -> LWWMap:
        """The entries with a timestamp after `since` (all of them for None).

        Complete for a peer only if it already holds every entry at or below `since`, e.g. when
        `since` is the highest timestamp the peer received from this map's single writer.
        """
        delta = LWWMap()
        delta._entries = {
            key: entry for key, entry in self._entries.items() if since is None or entry.ts > since
        }
        return delta

    # --- serialisation --------------------------------------------------------------------

    def to_json(self) -> dict[str, JSONValue]:
        """{"version": 1, "entries": {key: [ts] | [ts, value]}}: plain data for json.dumps."""
        return {
            "version": JSON_FORMAT_VERSION,
            "entries": {key: entry.to_json() for key, entry in self._entries.items()},
        }

    @classmethod
    def from_json(cls, data: object) -> LWWMap:
        """Rebuild a map from `to_json()` output; raises ValueError naming what is malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"LWWMap JSON must be an object, not {type(data).__name__}")
        if set(data) != {"version", "entries"}:
            fields = sorted(map(repr, data))
            raise ValueError(f"LWWMap JSON needs exactly 'version' and 'entries', not {fields}")
        version = data["version"]
        if type(version) is not int or version != JSON_FORMAT_VERSION:
            raise ValueError(f"unsupported LWWMap JSON version {version!r}")
        raw_entries = data["entries"]
        if not isinstance(raw_entries, dict):
            kind = type(raw_entries).__name__
            raise ValueError(f"LWWMap 'entries' must be an object, not {kind}")
        result = cls()
        for key, raw in raw_entries.items():
            if not isinstance(key, str):
                raise ValueError(f"LWWMap key {key!r} is not a str")
            try:
                result._put(key, Entry.from_json(raw))
            except ValueError as exc:
                raise ValueError(f"LWWMap entry {key!r}: {exc}") from None
        return result

    def to_json_text(self) -> str:
        """`to_json()` as canonical JSON text."""
        return stable_json(self.to_json())

    @classmethod
    def from_json_text(cls, text: str | bytes) -> LWWMap:
        """Parse JSON text (e.g. a Redis stream field) and `from_json()` it; ValueError if bad."""
        try:
            data: Any = json.loads(text, parse_constant=_reject_constant)
        except RecursionError:
            raise ValueError("LWWMap JSON is nested too deeply") from None
        except ValueError as exc:
            raise ValueError(f"LWWMap JSON text is not valid JSON: {exc}") from None
        return cls.from_json(data)

    def digest(self) -> str:
        """sha256 hex of the canonical form of every entry, tombstones included.

        Replicas with equal digests hold equal state.
        """
        return hashlib.sha256(self.to_json_text().encode("ascii")).hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LWWMap):
            return NotImplemented
        return self._entries == other._entries

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{k!r}: {e.value!r} @ {e.ts}" for k, e in self.entries())
        return f"LWWMap({{{shown}}})"


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in JSON")
