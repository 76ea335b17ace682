"""The pauses scenario's checker: pause computation from send/ack times, loss and duplicate
accounting, the victim choice, the load's rate. Pure functions: no Redis, no node."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from bench.pauses import (
    DEFAULT_RATE,
    Command,
    Member,
    NodeView,
    Receipts,
    delivery_check,
    first_ack_after,
    good_rate,
    longest_stall,
    pick_victim,
    summary_ms,
)


def cmd(sent: float, acked: float | None, cid: str = "c", room: str = "r") -> Command:
    return Command(room, cid, sent, acked, None if acked is None else 1)


# -- first_ack_after (fail-over pause)


def test_first_ack_after_counts_only_sends_made_after_the_kill() -> None:
    commands = [
        cmd(9.9, 10.05, "in-flight"),  # acked just after the kill: left the old owner before it
        cmd(10.2, 13.4, "waited"),
        cmd(10.7, 13.5, "later"),
    ]
    assert first_ack_after(commands, 10.0) == pytest.approx(3.4)


def test_first_ack_after_is_none_without_an_ack() -> None:
    assert first_ack_after([], 1.0) is None
    assert first_ack_after([cmd(2.0, None)], 1.0) is None
    assert first_ack_after([cmd(0.5, 0.6)], 1.0) is None  # only an earlier send


def test_first_ack_after_takes_the_earliest_ack_not_the_earliest_send() -> None:
    commands = [cmd(1.1, 5.0, "a"), cmd(1.5, 4.0, "b")]
    assert first_ack_after(commands, 1.0) == pytest.approx(3.0)


# -- longest_stall (drain hand-off pause)


def test_stall_of_a_sequential_sender_is_its_longest_send_to_ack() -> None:
    commands = [cmd(0.0, 0.01, "1"), cmd(0.5, 0.52, "2"), cmd(1.0, 1.3, "3"), cmd(1.5, 1.51, "4")]
    assert longest_stall(commands, 0.0, 2.0) == pytest.approx(0.3)


def test_stall_idle_time_between_sends_is_not_a_pause() -> None:
    # one ack at 0.01 then nothing sent until 5.0: five seconds without acks, nobody waiting
    commands = [cmd(0.0, 0.01, "1"), cmd(5.0, 5.02, "2")]
    assert longest_stall(commands, 0.0, 6.0) == pytest.approx(0.02)


def test_stall_with_overlapping_senders_is_the_gap_between_acks_while_someone_waits() -> None:
    # the room stops answering at 1.0 (first waiter), answers again at 1.4; the second sender's
    # ack at 1.45 ends its own shorter wait
    commands = [cmd(0.9, 0.95, "a"), cmd(1.0, 1.4, "b"), cmd(1.1, 1.45, "c"), cmd(1.2, 1.46, "d")]
    assert longest_stall(commands, 0.0, 2.0) == pytest.approx(0.4)


def test_stall_counts_an_unacked_command_until_the_window_ends() -> None:
    assert longest_stall([cmd(1.0, None)], 0.0, 3.0) == pytest.approx(2.0)


def test_stall_is_clipped_to_the_window() -> None:
    # waiting since 0.0, acked at 5.0; the window is [2, 3]: the whole window is a stall
    assert longest_stall([cmd(0.0, 5.0)], 2.0, 3.0) == pytest.approx(1.0)
    # acked before the window, or sent after it: nothing
    assert longest_stall([cmd(0.0, 1.0), cmd(4.0, 4.5)], 2.0, 3.0) == 0.0


def test_stall_of_nothing_is_zero() -> None:
    assert longest_stall([], 0.0, 1.0) == 0.0


def test_stall_and_first_ack_reject_malformed_times() -> None:
    with pytest.raises(ValueError, match="acked before"):
        longest_stall([cmd(2.0, 1.0)], 0.0, 3.0)
    with pytest.raises(ValueError, match="end before start"):
        longest_stall([], 3.0, 1.0)
    with pytest.raises(ValueError, match="must be a number"):
        longest_stall([cmd(math.nan, 1.0)], 0.0, 3.0)
    with pytest.raises(ValueError, match="must be a number"):
        first_ack_after([cmd(1.0, 2.0)], math.nan)
    with pytest.raises(ValueError, match="must be a number"):
        first_ack_after([Command("r", "c", "1.0", None)], 0.0)  # type: ignore[arg-type]


# -- summary_ms


def test_summary_ms_figures_and_missing() -> None:
    values: list[float | None] = [0.1 * i for i in range(1, 101)] + [None]
    summary = summary_ms(values)
    assert summary["n"] == 101
    assert summary["missing"] == 1
    assert summary["median_ms"] == pytest.approx(5050.0)
    assert summary["p99_ms"] == pytest.approx(10000.0)
    assert summary["max_ms"] == pytest.approx(10000.0)


def test_summary_ms_of_nothing() -> None:
    assert summary_ms([]) == {
        "n": 0,
        "missing": 0,
        "median_ms": None,
        "p99_ms": None,
        "max_ms": None,
    }
    assert summary_ms([None, None])["missing"] == 2


# -- delivery_check


def test_delivery_check_all_delivered_once() -> None:
    acked = {"r1": {"a": 1, "b": 2}, "r2": {"c": 1}}
    members = [
        Receipts("r1", "m1", Counter({"a": 1, "b": 1})),
        Receipts("r1", "m2", Counter({"b": 1, "a": 1})),
        Receipts("r2", "m3", Counter({"c": 1})),
    ]
    check = delivery_check(acked, members)
    assert (check["acked"], check["expected"], check["delivered"]) == (3, 5, 5)
    assert check["lost"] == 0 and check["duplicates"] == 0


def test_delivery_check_counts_a_loss_per_member_and_a_duplicate() -> None:
    acked = {"r1": {"a": 1, "b": 2}}
    members = [
        Receipts("r1", "m1", Counter({"a": 2, "b": 1})),  # a twice
        Receipts("r1", "m2", Counter({"a": 1})),  # b missing
        Receipts("r1", "m3", Counter()),  # both missing
    ]
    check = delivery_check(acked, members)
    assert check["lost"] == 3
    assert check["duplicates"] == 1
    assert check["delivered"] == 3
    assert check["loss_samples"][0].startswith("r1/m2: 1 missing")


def test_delivery_check_owes_nothing_to_a_member_that_did_not_resume() -> None:
    acked = {"r1": {"a": 1}}
    check = delivery_check(acked, [Receipts("r1", "gone", Counter(), live=False)])
    assert check["lost"] == 0 and check["expected"] == 0
    assert check["members_not_resumed"] == 1


def test_delivery_check_an_unacked_message_received_is_not_a_loss_but_is_counted() -> None:
    check = delivery_check({"r1": {}}, [Receipts("r1", "m", Counter({"never-acked": 1}))])
    assert check["lost"] == 0
    assert check["received_unacked"] == 1


def test_delivery_check_a_room_with_no_acked_messages_and_empty_inputs() -> None:
    assert delivery_check({}, [])["expected"] == 0
    check = delivery_check({}, [Receipts("r9", "m", Counter())])
    assert check["lost"] == 0 and check["expected"] == 0


def test_delivery_check_rejects_malformed_receipts() -> None:
    with pytest.raises(ValueError, match="Counter"):
        delivery_check({}, [Receipts("r", "m", {"a": 1})])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="below 1"):
        delivery_check({}, [Receipts("r", "m", Counter({"a": 0}))])


# -- the victim and the rate


def test_pick_victim_is_the_owner_of_most_rooms() -> None:
    owners = {"r1": "b", "r2": "b", "r3": "a", "r4": None, "other": "a"}
    assert pick_victim(owners, ["r1", "r2", "r3", "r4"], ["a", "b", "c"]) == "b"
    assert pick_victim({}, ["r1"], ["a", "b"]) == "a"  # nothing known: the first
    with pytest.raises(ValueError):
        pick_victim(owners, ["r1"], [])


def test_good_rate() -> None:
    assert good_rate([]) == (DEFAULT_RATE, "default (S1 not run)")
    steps = [
        {"kind": "step", "offered_target": 500, "good": True},
        {"kind": "step", "offered_target": 1000, "good": True},
        {"kind": "step", "offered_target": 2000, "good": False},
    ]
    assert good_rate(steps)[0] == 1000
    assert good_rate([{**s, "good": False} for s in steps])[0] == 500
    faster = [*steps, {"kind": "step", "offered_target": 4000, "good": True}]
    assert good_rate(faster)[0] == DEFAULT_RATE
    assert good_rate([{"kind": "skipped", "offered_target": 9}]) == (
        DEFAULT_RATE,
        "default (S1 not run)",
    )


# -- the report's table


def test_pause_rows_project_peer_and_failed_phase() -> None:
    from bench.report import PAUSE_HEADER, pause_rows

    summary = {"n": 9, "missing": 0, "median_ms": 2700.0, "p99_ms": 2900.0, "max_ms": 2950.0}
    records = [
        {
            "system": "project", "kind": "pause", "phase": "failover", "lease_ttl_ms": 3000,
            "offered_target": 2000, "nodes": 3, "rooms": 20, "affected_rooms": 9,
            "pause": summary, "met": True, "acked": 400, "lost": 0, "duplicates": 0,
            "clients_on_victim": 334, "clients_resumed": 334, "loadavg": [2.0, 1.0, 1.0],
        },
        {"system": "project", "kind": "pause", "phase": "error", "error": "boom"},
        {
            "system": "socketio", "kind": "pause", "phase": "kill", "offered_target": 2000,
            "receive_again": {**summary, "missing": 2}, "messages": 400, "lost": 50,
            "loss_share": 0.0025, "duplicates": 0, "loadavg": [1.0, 1.0, 1.0],
        },
        {"system": "socketio", "kind": "step"},  # not a pause record
    ]  # fmt: skip
    rows = pause_rows(records, ["project", "socketio"])
    assert len(rows) == 3
    assert all(len(row) == len(PAUSE_HEADER) for row in rows)
    failover, error, peer = rows
    assert failover[5] == "2,700 / 2,900 / 2,950"
    assert "TTL 3 s + 1 s" in failover[6] and failover[7] == "yes"
    assert error[2] == "boom"
    assert peer[5].endswith("(2 never)") and peer[7] == "–"
    assert peer[12] == "50 (0.2%)"


def test_run_title_names_a_partial_run() -> None:
    from bench.report import run_title

    assert run_title({"quick": True}) == "Quick run (`scripts/bench --quick`)"
    every = {"systems": ["project", "channels-core", "channels-pubsub", "socketio"]}
    full = {**every, "scenarios": ["idle", "s1", "big", "storm", "pauses"]}
    assert run_title(full) == "Full run (`scripts/bench`)"
    partial = {"quick": True, "systems": ["project"], "scenarios": ["s1", "pauses"]}
    assert run_title(partial) == (
        "Quick run (`scripts/bench --quick --systems project --scenarios s1,pauses`)"
    )
    assert run_title({"systems": "project"}) == "Full run (`scripts/bench`)"  # malformed: ignored


# -- a member's frame accounting (no socket: frames handed in directly)


class _FakeSystem:
    ports = [1, 2, 3]

    def ws_url(self, node: int, room: str, name: str, after: int | None = None) -> str:
        return f"ws://n{node}/{room}?name={name}&after={after}"


def _member() -> Member:
    view = NodeView(_FakeSystem())  # type: ignore[arg-type]
    member = Member(7, "r", view, slot=0)
    member.prefix = "F1-"
    return member


def test_member_counts_only_this_phase_and_spots_a_replayed_seq() -> None:
    member = _member()
    member._on_frame({"type": "message", "seq": 1, "client_id": "F1-a"})
    member._on_frame({"type": "message", "seq": 2, "client_id": "old-phase"})
    member._on_frame({"type": "message", "seq": 3, "client_id": None})
    member._on_frame({"type": "message", "seq": 1, "client_id": "F1-a"})  # delivered again
    assert member.counts == Counter({"F1-a": 2})
    assert member.last_seq == 3
    assert member.out_of_order == 1
    member._on_frame({"type": "gap", "first_available": 9})
    assert member.gaps == 1


def test_member_ack_settles_its_command_once_and_flags_a_second_seq() -> None:
    member = _member()
    command = Command("r", "F1-x", 1.0)
    member.commands.append(command)
    member.pending["F1-x"] = command
    member._on_frame({"type": "ack", "client_id": "F1-x", "seq": 5})
    assert command.acked_at is not None and command.seq == 5
    assert member.pending == {}
    member._on_frame({"type": "ack", "client_id": "F1-x", "seq": 5})  # a re-send's ack: same seq
    assert member.conflicting_acks == 0
    member._on_frame({"type": "ack", "client_id": "F1-x", "seq": 6})  # applied twice
    assert member.conflicting_acks == 1
    member._on_frame({"type": "ack", "client_id": "unknown", "seq": 1})
    assert member.conflicting_acks == 1


def test_node_view_sends_a_resume_elsewhere() -> None:
    view = NodeView(_FakeSystem())  # type: ignore[arg-type]
    assert view.live == [0, 1, 2]
    assert {view.next_slot(0, salt) for salt in range(6)} == {1, 2}
    view.live.remove(1)
    assert view.next_slot(0, 5) == 2
    view.live = [0]
    assert view.next_slot(0, 3) == 0  # nowhere else to go: the same node
