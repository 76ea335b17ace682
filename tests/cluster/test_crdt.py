"""Laws and scenarios of cluster.crdt: the HLC, timestamps, the LWW register and the LWW map."""

from __future__ import annotations

import ast
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster import crdt
from cluster.crdt import (
    MAX_COUNTER,
    MAX_WALL_MS,
    TOMBSTONE,
    ClockDriftError,
    Entry,
    HybridLogicalClock,
    JSONValue,
    LWWMap,
    LWWRegister,
    Timestamp,
    Tombstone,
    stable_json,
)

# The file should run in seconds: the laws get 200 examples, fuzzing and scenarios 100.
LAWS = settings(max_examples=200, deadline=None)
FUZZ = settings(max_examples=100, deadline=None)
SCENARIOS = settings(max_examples=100, deadline=None)

# Printable, no whitespace: what a node id may hold (pod names, hostname-pid, and more).
node_ids = st.text(
    st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")),
    max_size=8,
)
timestamps = st.builds(
    Timestamp,
    st.integers(0, MAX_WALL_MS),
    st.integers(0, MAX_COUNTER),
    node_ids,
)
json_values: st.SearchStrategy[JSONValue] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=4,
)

# Few keys, few timestamps, values that are == in Python but differ in JSON: collisions galore,
# so the laws are checked on the tie-break too, not only on distinct timestamps.
small_timestamps = st.builds(
    Timestamp, st.integers(0, 2), st.integers(0, 2), st.sampled_from(["a", "b"])
)
small_values: st.SearchStrategy[JSONValue | Tombstone] = st.sampled_from(
    [TOMBSTONE, None, True, 1, 1.0, 0, False, "x", [1], {"a": 1}, {"a": True}]
)
small_maps = st.dictionaries(
    st.sampled_from("pqrs"), st.builds(Entry, small_values, small_timestamps), max_size=4
).map(LWWMap)
any_maps = st.dictionaries(
    st.text(max_size=4), st.builds(Entry, json_values | st.just(TOMBSTONE), timestamps), max_size=3
).map(LWWMap)
maps = small_maps | any_maps


class FakeClock:
    def __init__(self, ms: int = 0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


# --- Timestamp --------------------------------------------------------------------------------


@LAWS
@given(timestamps)
def test_timestamp_string_and_list_round_trip(ts: Timestamp) -> None:
    assert Timestamp.from_string(ts.to_string()) == ts
    assert Timestamp.from_list(json.loads(json.dumps(ts.to_list()))) == ts
    assert str(ts) == ts.to_string()


@LAWS
@given(timestamps, timestamps)
def test_timestamp_string_sorts_like_the_timestamp(a: Timestamp, b: Timestamp) -> None:
    assert (a < b) == (a.to_string() < b.to_string())
    assert (a == b) == (a.to_string() == b.to_string())
    # Redis and other stores compare bytes: UTF-8 keeps code point order.
    assert (a < b) == (a.to_string().encode() < b.to_string().encode())


def test_timestamp_order_is_wall_then_counter_then_node() -> None:
    assert Timestamp(1, 9, "z") < Timestamp(2, 0, "a")
    assert Timestamp(2, 0, "z") < Timestamp(2, 1, "a")
    assert Timestamp(2, 1, "a") < Timestamp(2, 1, "b")
    assert Timestamp.floor(2) < Timestamp(2, 0, "a")
    assert Timestamp(1732870000000, 5, "chat-0").to_string() == (
        "000001732870000000-0000000005-chat-0"
    )


@pytest.mark.parametrize(
    "args",
    [
        (-1, 0, "n"),
        (MAX_WALL_MS + 1, 0, "n"),
        (0, -1, "n"),
        (0, MAX_COUNTER + 1, "n"),
        (True, 0, "n"),
        (1.0, 0, "n"),
        (0, 0, "a b"),
        (0, 0, "a\nb"),
        (0, 0, 5),
    ],
)
def test_timestamp_rejects_bad_fields(args: tuple[Any, Any, Any]) -> None:
    with pytest.raises(ValueError):
        Timestamp(*args)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1-2-n",
        "000000000000000001-0000000002",
        "00000000000000001-0000000002-n",
        "000000000000000001-000000002-n",
        "+00000000000000001-0000000002-n",
        "000000000000000001_0000000002-n",
        "000000000000000001-0000000002-n n",
        "000000000000000001-0000000002-n\n",
        "٠٠٠٠٠٠٠٠٠٠٠٠٠٠٠٠٠١-0000000002-n",
        " 000000000000000001-0000000002-n",
        5,
        None,
        ["000000000000000001-0000000002-n"],
    ],
)
def test_timestamp_from_string_rejects_malformed(text: Any) -> None:
    with pytest.raises(ValueError):
        Timestamp.from_string(text)


@pytest.mark.parametrize(
    "data", [[1, 2], [1, 2, "n", 4], "1,2,n", [1, "2", "n"], [1, 2, None], {"0": 1}, None]
)
def test_timestamp_from_list_rejects_malformed(data: Any) -> None:
    with pytest.raises(ValueError):
        Timestamp.from_list(data)


@FUZZ
@given(st.text(max_size=40) | st.from_regex(r"[0-9]{18}-[0-9]{10}-.{0,5}", fullmatch=True))
def test_timestamp_from_string_parses_or_raises_value_error(text: str) -> None:
    try:
        ts = Timestamp.from_string(text)
    except ValueError:
        return
    assert ts.to_string() == text


# --- HybridLogicalClock ----------------------------------------------------------------------

# A step of a clock's life: the wall clock reads `wall`, then the clock issues a timestamp, or
# observes a remote one `offset` ms away from the wall clock (some beyond the drift limit).
clock_steps = st.lists(
    st.tuples(
        st.integers(0, 10**13),
        st.none() | st.tuples(st.integers(-(10**6), 70_000), st.integers(0, MAX_COUNTER), node_ids),
    ),
    min_size=1,
    max_size=40,
)


@LAWS
@given(clock_steps, st.sampled_from([0, 1, 60_000]))
def test_hlc_is_strictly_monotonic_and_bounded(
    steps: list[tuple[int, tuple[int, int, str] | None]], max_drift_ms: int
) -> None:
    wall = FakeClock()
    clock = HybridLogicalClock("me", wall, max_drift_ms=max_drift_ms)
    greatest: Timestamp | None = None  # of all issued and observed
    highest_wall = 0  # of all wall readings and accepted remote walls
    for reading, remote in steps:
        wall.ms = reading
        highest_wall = max(highest_wall, reading)
        if remote is None:
            stamp = clock.now()
        else:
            offset, counter, node = remote
            theirs = Timestamp(max(0, reading + offset), counter, node)
            if theirs.wall_ms - reading > max_drift_ms:
                before = clock.last
                with pytest.raises(ClockDriftError):
                    clock.observe(theirs)
                assert clock.last == before
                continue
            stamp = clock.observe(theirs)
            assert stamp > theirs
            greatest = max(greatest or theirs, theirs)
            highest_wall = max(highest_wall, theirs.wall_ms)
        assert greatest is None or stamp > greatest
        assert stamp.node == "me"
        assert stamp.wall_ms >= reading
        # +1: a remote counter at its maximum makes the clock borrow one millisecond.
        assert stamp.wall_ms <= highest_wall + 1
        assert clock.last == stamp
        greatest = stamp


@LAWS
@given(timestamps.filter(lambda ts: ts.wall_ms <= 10**13), st.integers(0, 10**13))
def test_hlc_after_observe_now_exceeds_the_observed(remote: Timestamp, reading: int) -> None:
    clock = HybridLogicalClock("me", FakeClock(reading), max_drift_ms=10**13)
    clock.observe(remote)
    assert clock.now() > remote
    assert clock.now() > remote


def test_hlc_survives_a_wall_clock_going_backwards() -> None:
    wall = FakeClock(1_000)
    clock = HybridLogicalClock("n1", wall)
    first = clock.now()
    wall.ms = 500
    second = clock.now()
    third = clock.now()
    assert first < second < third
    assert (second.wall_ms, second.counter) == (1_000, 1)
    wall.ms = 2_000
    assert clock.now() == Timestamp(2_000, 0, "n1")


def test_hlc_rejects_a_remote_clock_too_far_ahead() -> None:
    wall = FakeClock(1_000_000)
    clock = HybridLogicalClock("n1", wall)
    mine = clock.now()
    with pytest.raises(ClockDriftError, match="ahead of the local clock"):
        clock.observe(Timestamp(1_000_000 + 60_001, 0, "bad"))
    with pytest.raises(ValueError):  # ClockDriftError is a ValueError
        clock.observe(Timestamp(10**15, 0, "bad"))
    assert clock.last == mine
    assert clock.now() == Timestamp(1_000_000, 1, "n1")  # not poisoned
    edge = Timestamp(1_000_000 + 60_000, 7, "ok")
    assert clock.observe(edge) == Timestamp(1_060_000, 8, "n1")


def test_hlc_merges_counters_like_kulkarni() -> None:
    wall = FakeClock(100)
    clock = HybridLogicalClock("n1", wall)
    assert clock.now() == Timestamp(100, 0, "n1")
    assert clock.observe(Timestamp(100, 5, "n2")) == Timestamp(100, 6, "n1")
    assert clock.observe(Timestamp(90, 50, "n2")) == Timestamp(100, 7, "n1")
    assert clock.observe(Timestamp(150, 3, "n2")) == Timestamp(150, 4, "n1")
    wall.ms = 200
    assert clock.observe(Timestamp(150, 9, "n2")) == Timestamp(200, 0, "n1")


def test_hlc_counter_overflow_borrows_a_millisecond() -> None:
    clock = HybridLogicalClock("n1", FakeClock(100))
    stamp = clock.observe(Timestamp(100, MAX_COUNTER, "n2"))
    assert stamp == Timestamp(101, 0, "n1")
    assert clock.now() == Timestamp(101, 1, "n1")


def test_hlc_validates_its_arguments() -> None:
    with pytest.raises(ValueError):
        HybridLogicalClock("")
    with pytest.raises(ValueError):
        HybridLogicalClock("has space")
    with pytest.raises(ValueError):
        HybridLogicalClock("n", max_drift_ms=-1)
    clock = HybridLogicalClock("n")
    assert clock.node == "n"
    assert clock.last is None
    assert clock.now().wall_ms > 1_600_000_000_000  # the default reads the real wall clock


# --- LWWRegister ----------------------------------------------------------------------------

registers = st.builds(LWWRegister, small_values, small_timestamps)


@LAWS
@given(registers, registers, registers)
def test_register_merge_laws(a: LWWRegister[Any], b: LWWRegister[Any], c: LWWRegister[Any]) -> None:
    assert a.merge(b) == b.merge(a) or stable_json(a.merge(b).value) == stable_json(
        b.merge(a).value
    )
    assert a.merge(b).ts == b.merge(a).ts == max(a.ts, b.ts)
    assert a.merge(b).merge(c) is a.merge(b.merge(c))
    assert a.merge(a) is a


def test_register_keeps_the_later_write() -> None:
    early, late = Timestamp(1, 0, "a"), Timestamp(1, 0, "b")
    reg = LWWRegister("topic one", late)
    assert reg.set("older", early) is reg
    assert reg.set("newer", Timestamp(2, 0, "a")).value == "newer"
    assert LWWRegister("x", early).merge(reg).value == "topic one"


# --- LWWMap: laws -----------------------------------------------------------------------------


# One test for all the join laws: drawing maps is what costs, so the laws share the draws.
@LAWS
@given(maps, maps, maps)
def test_map_merge_is_commutative_associative_and_idempotent(
    a: LWWMap, b: LWWMap, c: LWWMap
) -> None:
    ab, ba = a.merged(b), b.merged(a)
    assert ab == ba, "commutative"
    assert ab.digest() == ba.digest() and ab.items() == ba.items()

    left, right = ab.merged(c), a.merged(b.merged(c))
    assert left == right, "associative"
    assert left.digest() == right.digest()

    assert a.merged(a) == a and a.merged(a).digest() == a.digest(), "idempotent"
    assert ab.merged(b) == ab and ab.merged(a) == ab
    assert not ab.copy().merge(b), "nothing is new the second time"

    target = a.copy()
    changed = target.merge(b)  # in place, returning what was new
    assert target == ab
    assert a.merged(changed) == ab
    for key, entry in changed.entries():
        assert target.entry(key) is entry


@FUZZ
@given(maps, st.text(max_size=3), json_values | st.just(TOMBSTONE), timestamps)
def test_map_mutators_return_their_delta(
    before: LWWMap, key: str, value: JSONValue | Tombstone, ts: Timestamp
) -> None:
    after = before.copy()
    delta = after.remove(key, ts) if value is TOMBSTONE else after.set(key, value, ts)
    assert [k for k, _ in delta.entries()] == [key]
    assert before.merged(delta) == after
    assert after.merged(delta) == after
    assert delta  # a removal delta is still worth sending


# --- LWWMap: convergence across nodes ---------------------------------------------------------


@dataclass
class Write:
    key: str
    value: JSONValue | Tombstone
    ts: Timestamp
    delta: LWWMap


@dataclass
class Node:
    clock: HybridLogicalClock
    wall: FakeClock
    replica: LWWMap = field(default_factory=LWWMap)
    seen: int = 0  # how many writes of the history it has merged


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Node], list[Write]]:
    """Several nodes with their own (skewed, sometimes backwards) clocks write to the same keys;
    now and then one catches up on everything written so far, so later writes follow earlier
    ones causally, as a remove that follows the set it removes."""
    count = draw(st.integers(1, 4))
    nodes = []
    for i in range(count):
        wall = FakeClock(1_000_000 + draw(st.integers(-2_000, 2_000)))
        nodes.append(Node(HybridLogicalClock(f"node-{i}", wall), wall))
    writes: list[Write] = []
    for _ in range(draw(st.integers(0, 30))):
        node = nodes[draw(st.integers(0, count - 1))]
        node.wall.ms += draw(st.integers(-50, 100))
        action = draw(st.sampled_from(["set", "set", "remove", "sync"]))
        if action == "sync":
            for write in writes[node.seen :]:
                node.replica.merge(write.delta)
                node.clock.observe(write.ts)
            node.seen = len(writes)
            continue
        key = draw(st.sampled_from(["msg:1", "msg:2", "topic", "presence:ann"]))
        ts = node.clock.now()
        if action == "set":
            value = draw(json_values)
            writes.append(Write(key, value, ts, node.replica.set(key, value, ts)))
        else:
            writes.append(Write(key, TOMBSTONE, ts, node.replica.remove(key, ts)))
    return nodes, writes


def expected_items(writes: list[Write]) -> list[tuple[str, JSONValue]]:
    """What the map must hold: per key, the write with the highest timestamp."""
    latest: dict[str, Write] = {}
    for write in writes:
        if write.key not in latest or write.ts > latest[write.key].ts:
            latest[write.key] = write
    return sorted(
        (key, json.loads(stable_json(w.value)))
        for key, w in latest.items()
        if w.value is not TOMBSTONE
    )


def via_stream(delta: LWWMap) -> LWWMap:
    """A delta as it comes back out of a Redis stream field."""
    return LWWMap.from_json_text(delta.to_json_text().encode())


@SCENARIOS
@given(histories(), st.data())
def test_replicas_converge_under_reorder_duplicates_and_resends(
    history: tuple[list[Node], list[Write]], data: st.DataObject
) -> None:
    nodes, writes = history
    deltas = [write.delta for write in writes]
    reference = LWWMap()
    for delta in deltas:
        reference.merge(delta)
    assert reference.items() == expected_items(writes)
    assert len(reference) == len(reference.items())

    for _ in range(3):
        replica = LWWMap()
        order = data.draw(st.permutations(deltas))
        if deltas:
            order += data.draw(st.lists(st.sampled_from(deltas), max_size=6))  # duplicates
        dropped = data.draw(st.sets(st.integers(0, max(0, len(order) - 1)), max_size=5))
        for i, delta in enumerate(order):
            if i not in dropped:
                replica.merge(via_stream(delta))
        for i in data.draw(st.permutations(sorted(i for i in dropped if i < len(order)))):
            replica.merge(via_stream(order[i]))  # re-sent late
        assert replica.digest() == reference.digest()
        assert replica.items() == reference.items()
        assert replica == reference

    for node in nodes:  # every node catching up on the writes it missed converges too
        for write in writes[node.seen :]:
            node.replica.merge(write.delta)
        assert node.replica.digest() == reference.digest()


@SCENARIOS
@given(
    st.lists(st.tuples(timestamps, json_values), min_size=1, max_size=5),
    timestamps,
    st.data(),
)
def test_a_remove_is_never_undone_by_an_older_set_arriving_later(
    sets: list[tuple[Timestamp, JSONValue]], remove_ts: Timestamp, data: st.DataObject
) -> None:
    older = [(ts, value) for ts, value in sets if ts < remove_ts]
    deltas = [LWWMap().set("msg:7", value, ts) for ts, value in older]
    removal = LWWMap().remove("msg:7", remove_ts)
    replica = LWWMap()
    replica.merge(removal)
    for delta in data.draw(st.permutations(deltas + deltas)):
        replica.merge(delta)
        assert "msg:7" not in replica
        assert replica.get("msg:7", "gone") == "gone"
    entry = replica.entry("msg:7")
    assert entry is not None and entry.deleted and entry.ts == remove_ts


def test_delete_beats_a_concurrent_edit_from_a_lagging_node() -> None:
    wall_a, wall_b, wall_c = FakeClock(10_000), FakeClock(10_000), FakeClock(9_000)
    a = HybridLogicalClock("a", wall_a)
    b = HybridLogicalClock("b", wall_b)
    c = HybridLogicalClock("c", wall_c)
    owner_a, owner_b, owner_c = LWWMap(), LWWMap(), LWWMap()
    sent = owner_a.set("msg:1", {"body": "hi"}, a.now())
    owner_c.merge(sent)  # c has the message; its clock lags and it has not heard of b
    owner_b.merge(sent)
    b.observe(sent.max_timestamp() or Timestamp.floor(0))
    deleted = owner_b.remove("msg:1", b.now())
    edited = owner_c.set("msg:1", {"body": "hi!"}, c.now())
    for replica in (owner_a, owner_b, owner_c):
        replica.merge(deleted)
        replica.merge(edited)
        assert "msg:1" not in replica
    assert owner_a.digest() == owner_b.digest() == owner_c.digest()


# --- LWWMap: examples ------------------------------------------------------------------------


def test_map_basic_reads_and_writes() -> None:
    clock = HybridLogicalClock("n1", FakeClock(1_000))
    m = LWWMap()
    m.set("b", 2, clock.now())
    m.set("a", {"z": 1, "y": [True, None]}, clock.now())
    m.set("c", "three", clock.now())
    removed_at = clock.now()
    delta = m.remove("c", removed_at)
    m.remove("never-seen", clock.now())

    assert m.items() == [("a", {"y": [True, None], "z": 1}), ("b", 2)]
    assert m.keys() == ["a", "b"] == list(m)
    assert m.values() == [{"y": [True, None], "z": 1}, 2]
    assert len(m) == 2
    assert "a" in m and "c" not in m and "never-seen" not in m and 5 not in m
    assert m.get("c") is None and m.get("c", "x") == "x" and m.get("b") == 2
    assert [k for k, _ in m.entries()] == ["a", "b", "c", "never-seen"]
    assert delta.entries() == [("c", Entry(TOMBSTONE, removed_at))]
    assert len(delta) == 0 and bool(delta) and not LWWMap()
    assert m.max_timestamp() == Timestamp(1_000, 4, "n1")
    assert LWWMap().max_timestamp() is None
    assert "LWWMap(" in repr(m) and "TOMBSTONE" in repr(m)


def test_map_prefix_reads() -> None:
    m = LWWMap()
    ts = Timestamp(1, 0, "n")
    for key in ("msg:2", "msg:1", "presence:ann", "topic"):
        m.set(key, key, ts)
    m.remove("msg:3", ts)
    assert m.keys("msg:") == ["msg:1", "msg:2"]
    assert m.items("presence:") == [("presence:ann", "presence:ann")]
    assert [k for k, _ in m.entries("msg:")] == ["msg:1", "msg:2", "msg:3"]


def test_map_set_copies_values_canonically() -> None:
    value: dict[str, JSONValue] = {"b": [1, 2], "a": 1}
    m = LWWMap()
    m.set("k", value, Timestamp(1, 0, "n"))
    value["c"] = 3
    assert isinstance(value["b"], list)
    value["b"].append(3)
    stored = m.get("k")
    assert stored == {"a": 1, "b": [1, 2]}
    assert isinstance(stored, dict)
    assert list(stored) == ["a", "b"]  # keys sorted: replicas hold equal objects
    m.set("t", (1, 2), Timestamp(1, 0, "n"))  # type: ignore[arg-type]
    assert m.get("t") == [1, 2]


@pytest.mark.parametrize(
    "value", [object(), math.nan, math.inf, {1: "int key"}, {"a": {b"x"}}, b"bytes", [1, {2}]]
)
def test_map_set_rejects_values_json_cannot_hold(value: Any) -> None:
    m = LWWMap()
    with pytest.raises(ValueError, match="'k'"):
        m.set("k", value, Timestamp(1, 0, "n"))
    assert not m


def test_map_equal_timestamps_break_ties_deterministically() -> None:
    ts = Timestamp(5, 0, "n")
    with_true, with_one = LWWMap({"k": Entry(True, ts)}), LWWMap({"k": Entry(1, ts)})
    assert with_true.merged(with_one).digest() == with_one.merged(with_true).digest()
    assert with_true.merged(with_one).get("k") is True  # "true" > "1"
    assert with_true != with_one  # True == 1 in Python, not in JSON
    tomb = LWWMap({"k": Entry(TOMBSTONE, ts)})
    assert "k" not in with_true.merged(tomb) and "k" not in tomb.merged(with_true)


def test_map_delta_since_and_prune_tombstones() -> None:
    m = LWWMap()
    m.set("old", 1, Timestamp(10, 0, "n"))
    m.remove("gone-long-ago", Timestamp(10, 1, "n"))
    m.remove("gone-lately", Timestamp(30, 0, "n"))
    m.set("new", 2, Timestamp(40, 0, "n"))
    assert [k for k, _ in m.delta_since(Timestamp(10, 1, "n")).entries()] == [
        "gone-lately",
        "new",
    ]
    assert m.delta_since(None) == m
    assert not m.delta_since(Timestamp(40, 0, "n"))
    assert m.prune_tombstones(Timestamp.floor(20)) == 1
    assert [k for k, _ in m.entries()] == ["gone-lately", "new", "old"]
    assert m.prune_tombstones(Timestamp.floor(20)) == 0
    assert m.items() == [("new", 2), ("old", 1)]


def test_map_copy_and_merged_leave_the_originals_alone() -> None:
    a = LWWMap()
    a.set("k", 1, Timestamp(1, 0, "n"))
    b = LWWMap()
    b.set("k", 2, Timestamp(2, 0, "n"))
    c = a.copy()
    c.set("x", 3, Timestamp(3, 0, "n"))
    assert a.merged(b).get("k") == 2
    assert a.get("k") == 1 and "x" not in a and b.keys() == ["k"]


def test_digest_covers_tombstones() -> None:
    live, dead = LWWMap(), LWWMap()
    live.set("x", 1, Timestamp(1, 0, "n"))
    dead.remove("x", Timestamp(1, 0, "n"))
    assert live.digest() != dead.digest() != LWWMap().digest()
    assert len(live.digest()) == 64
    assert dead.items() == LWWMap().items() and dead.digest() != LWWMap().digest()


# --- LWWMap: JSON ---------------------------------------------------------------------------


@FUZZ
@given(maps)
def test_map_json_round_trip(m: LWWMap) -> None:
    data = m.to_json()
    again = LWWMap.from_json(json.loads(json.dumps(data)))
    assert again == m
    assert again.digest() == m.digest()
    assert LWWMap.from_json_text(m.to_json_text()) == m
    assert m.to_json_text() == stable_json(data)


def test_map_json_shape() -> None:
    m = LWWMap()
    m.set("a", {"body": "hi"}, Timestamp(1, 2, "n"))
    m.remove("b", Timestamp(3, 4, "n"))
    assert m.to_json() == {
        "version": 1,
        "entries": {
            "a": ["000000000000000001-0000000002-n", {"body": "hi"}],
            "b": ["000000000000000003-0000000004-n"],
        },
    }


GOOD_TS = "000000000000000001-0000000002-n"


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (None, "must be an object"),
        ([], "must be an object"),
        ({}, "exactly 'version' and 'entries'"),
        ({"entries": {}}, "exactly"),
        ({"version": 1}, "exactly"),
        ({"version": 1, "entries": {}, "extra": 1}, "exactly"),
        ({"version": 2, "entries": {}}, "version"),
        ({"version": "1", "entries": {}}, "version"),
        ({"version": True, "entries": {}}, "version"),
        ({"version": 1.0, "entries": {}}, "version"),
        ({"version": 1, "entries": []}, "'entries' must be an object"),
        ({"version": 1, "entries": {"k": GOOD_TS}}, "entry 'k'"),
        ({"version": 1, "entries": {"k": []}}, "entry 'k'"),
        ({"version": 1, "entries": {"k": [GOOD_TS, 1, 2]}}, "entry 'k'"),
        ({"version": 1, "entries": {"k": ["not a timestamp", 1]}}, "malformed timestamp"),
        ({"version": 1, "entries": {"k": ["1-2-n", 1]}}, "malformed timestamp"),
        ({"version": 1, "entries": {"k": [[1, 2, "n"], 1]}}, "timestamp must be a str"),
        ({"version": 1, "entries": {"k": [None]}}, "timestamp must be a str"),
        ({"version": 1, "entries": {"k": [GOOD_TS, {"a": math.nan}]}}, "not representable"),
        ({"version": 1, "entries": {"k": [GOOD_TS, {"a": object()}]}}, "not a JSON value"),
        ({"version": 1, "entries": {1: [GOOD_TS, 1]}}, "not a str"),
    ],
)
def test_map_from_json_rejects_malformed(data: Any, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        LWWMap.from_json(data)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        b"\xff\xfe{}",
        '{"version": 1, "entries": {"k": ["' + GOOD_TS + '", NaN]}}',
        '{"version": 1, "entries": {"k": ["' + GOOD_TS + '", Infinity]}}',
        "[" * 100_000,
        "[1, 2]",
    ],
)
def test_map_from_json_text_rejects_malformed(text: str | bytes) -> None:
    with pytest.raises(ValueError):
        LWWMap.from_json_text(text)


@FUZZ
@given(
    json_values
    | st.fixed_dictionaries({"version": st.just(1), "entries": json_values})
    | st.fixed_dictionaries(
        {
            "version": st.just(1),
            "entries": st.dictionaries(
                st.text(max_size=3),
                st.lists(st.sampled_from([GOOD_TS, "junk"]) | json_values, max_size=3),
            ),
        }
    )
)
def test_map_from_json_accepts_or_raises_value_error(data: Any) -> None:
    try:
        m = LWWMap.from_json(data)
    except ValueError:
        return
    assert LWWMap.from_json(m.to_json()) == m


# --- the module itself -------------------------------------------------------------------------


def test_crdt_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(crdt.__file__).read_text())
    imported = {
        (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
    assert not imported & {"os", "io", "socket", "asyncio", "pathlib", "logging", "django"}
