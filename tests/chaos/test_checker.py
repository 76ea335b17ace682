"""The checker catches what it promises to catch: hand-made histories, no processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.checker import Excuse, Loss, Report, Rules, check, load, save
from tests.chaos.recorder import CLOSE, COMMAND, CONNECT, RECV, Record

ROOM = "lobby"
Frame = dict[str, Any]


def message(seq: int, user: str, client_id: str, body: str | None = None) -> Frame:
    return {"type": "message", "room": ROOM, "seq": seq, "id": f"m{seq}", "user": user,
            "body": body or f"{user} {client_id}", "ts": 1.0, "client_id": client_id}  # fmt: skip


@dataclass
class Story:
    """A history written by hand: ``at`` advances the clock."""

    records: list[Record] = field(default_factory=list)
    t: float = 0.0
    sockets: dict[str, int] = field(default_factory=dict)

    def at(self, t: float) -> Story:
        self.t = t
        return self

    def _add(self, client: str, kind: str, frame: Frame | None = None, code: int | None = None,
             socket: int | None = None) -> None:  # fmt: skip
        index = self.sockets.get(client, 0) if socket is None else socket
        self.records.append(Record(self.t, ROOM, client, index, kind, frame, code))
        self.t += 0.001

    def connect(self, client: str, *, node: str = "a", last_seq: int = 0,
                after: int | None = None, users: list[str] | None = None) -> Story:  # fmt: skip
        if client in self.sockets:
            self.sockets[client] += 1
        else:
            self.sockets[client] = 0
        self._add(client, CONNECT, {"after": after, "base": "ws://x"})
        self._add(client, RECV, {"type": "hello", "room": ROOM, "node": node, "user": client,
                                 "last_seq": last_seq})  # fmt: skip
        self._add(client, RECV, {"type": "presence_state", "users": users or [client]})
        return self

    def recv(self, client: str, frame: Frame) -> Story:
        self._add(client, RECV, frame)
        return self

    def send(self, client: str, client_id: str, body: str | None = None) -> Story:
        frame = {"type": "send", "body": body or f"{client} {client_id}", "client_id": client_id}
        self._add(client, COMMAND, frame)
        return self

    def ack(self, client: str, client_id: str, seq: int) -> Story:
        return self.recv(
            client, {"type": "ack", "client_id": client_id, "seq": seq, "id": f"m{seq}"}
        )

    def error(self, client: str, client_id: str, code: str) -> Story:
        return self.recv(
            client, {"type": "error", "code": code, "detail": "", "client_id": client_id}
        )

    def close(self, client: str, code: int = 1006) -> Story:
        self._add(client, CLOSE, code=code)
        return self


def rules(**kw: Any) -> Rules:
    return Rules(answer_budget_s=kw.pop("budget", 2.0), **kw)


def run(story: Story, log: list[Frame], **kw: Any) -> Report:
    report = check(story.records, {ROOM: log}, rules(**kw))
    print(report.summary())
    return report


def two_clients_chatting() -> tuple[Story, list[Frame]]:
    """ann and ben in one room, each sends one message; both see both; presence is right."""
    log = [message(1, "ann", "c1"), message(2, "ben", "c2")]
    s = Story()
    s.connect("ann").connect("ben", users=["ann", "ben"])
    s.recv("ann", {"type": "presence_diff", "joins": ["ben"], "leaves": []})
    s.send("ann", "c1").recv("ann", log[0]).recv("ben", log[0]).ack("ann", "c1", 1)
    s.send("ben", "c2").recv("ann", log[1]).recv("ben", log[1]).ack("ben", "c2", 2)
    return s, log


def what(report: Report) -> str:
    return "\n".join(v.what for v in report.violations)


def test_a_clean_history_passes_with_counts() -> None:
    story, log = two_clients_chatting()
    report = run(story, log)
    assert report.ok
    assert report.counts["acked"] == 2
    assert report.counts["received"] == 4
    assert report.counts["clients"] == 2
    assert "history check: OK" in report.summary()


def test_a_duplicate_delivery_is_caught() -> None:
    story, log = two_clients_chatting()
    story.recv("ben", log[1])
    report = run(story, log)
    assert "got seq 2 after 2" in what(report)
    assert report.counts["duplicated"] == 1


def test_a_reorder_is_caught() -> None:
    log = [message(1, "ann", "c1"), message(2, "ann", "c2")]
    s = Story().connect("ann").send("ann", "c1").send("ann", "c2")
    s.recv("ann", log[1]).recv("ann", log[0]).ack("ann", "c1", 1).ack("ann", "c2", 2)
    report = run(s, log)
    assert not report.ok
    assert report.counts["reordered"] == 1


def test_a_silent_jump_is_caught_and_shows_the_missing_event() -> None:
    log = [message(1, "ann", "c1"), message(2, "ann", "c2"), message(3, "ann", "c3")]
    s = Story().connect("ben")
    s.recv("ben", log[0]).recv("ben", log[2])
    report = run(s, log)
    assert "jumped from seq 1 to 3 without a gap frame" in what(report)
    assert '"seq": 2' in report.summary()  # the first offending events are printed
    assert "violations by kind: silent jump 1" in report.summary()


def test_a_saved_history_checks_the_same(tmp_path: Path) -> None:
    story, log = two_clients_chatting()
    story.recv("ben", log[1])
    given = rules(losses=[Loss(0.5, since=0.1)], excuses=[Excuse("a", 0.0, 0.1)])
    save(tmp_path / "history.json", story.records, {ROOM: log}, given)
    records, logs, again = load(tmp_path / "history.json")
    assert again == given
    assert (
        check(records, logs, again).summary() == check(story.records, {ROOM: log}, given).summary()
    )


def test_a_jump_after_a_gap_frame_passes_only_after_a_loss() -> None:
    log = [message(5, "ann", "c5")]
    s = Story().connect("ben", after=2, last_seq=5)
    s.at(2.0).recv("ben", {"type": "gap", "first_available": 5}).recv("ben", log[0])
    assert run(s, log, losses=[Loss(1.0)]).ok
    report = run(s, log)  # no fault that could lose anything: the gap itself is a violation
    assert "gap frame with no fault" in what(report)


def test_a_gap_that_undersells_the_hole_is_caught() -> None:
    log = [message(5, "ann", "c5"), message(6, "ann", "c6")]
    s = Story().connect("ben", after=2, last_seq=6)
    s.at(2.0).recv("ben", {"type": "gap", "first_available": 5}).recv("ben", log[1])
    assert "jumped from seq 2 to 6" in what(run(s, log, losses=[Loss(1.0)]))


def test_a_client_view_unlike_the_events_api_is_caught() -> None:
    story, log = two_clients_chatting()
    log[1] = message(2, "ben", "c2", body="something else")
    report = run(story, log)
    assert "seq 2: the client saw another event than the events API" in what(report)


def test_two_clients_seeing_different_events_under_one_seq_is_caught() -> None:
    # After a loss the log lacks seq 1, but two clients disagree on what it was: reused.
    s = Story().connect("ann").connect("bob")
    s.recv("ann", message(1, "x", "k1")).recv("bob", message(1, "y", "k2"))
    report = run(s, [], losses=[Loss(9.0)], require_caught_up=False)
    assert "two clients saw different events under seq 1" in what(report)


def test_an_acked_event_missing_from_the_log_is_lost() -> None:
    story, log = two_clients_chatting()
    report = run(story, log[:1], require_caught_up=False)
    assert report.counts["acked_lost"] == 1
    assert "acked seq 2 is not in the log" in what(report)
    # After a fault that may lose data, the loss is counted, not a violation.
    allowed = run(story, log[:1], require_caught_up=False, losses=[Loss(story.t)])
    assert allowed.counts["acked_lost_allowed"] == 1
    assert "acked seq 2 is not in the log" not in what(allowed)
    # ... unless it was acked before what the loss could reach (a replica that lagged by 5 s).
    lagged = [Loss(at=story.t + 10, since=story.t + 5)]
    later = run(story, log[:1], require_caught_up=False, losses=lagged)
    assert "acked seq 2 is not in the log" in what(later)


def test_an_event_seen_while_redis_was_being_replaced_may_be_lost() -> None:
    # Seen just after the kill, before the new Redis served: it was in the Redis that went.
    log = [message(1, "ann", "c1")]
    s = Story().connect("ben").at(2.0).recv("ben", log[0])
    assert run(s, [], losses=[Loss(1.9, through=2.5)], require_caught_up=False).ok
    late = run(s, [], losses=[Loss(1.0, through=1.5)], require_caught_up=False)
    assert "a client saw seq 1, the events API lacks it" in what(late)


def test_a_reused_seq_is_caught_through_the_ack() -> None:
    # The client was acked seq 2 for its command; the log now holds someone else's event there.
    story, log = two_clients_chatting()
    log[1] = message(2, "carl", "zz")
    report = run(story, log, losses=[Loss(story.t)])
    assert "acked seq 2 holds another event in the log" in what(report)


def test_an_event_applied_twice_is_caught() -> None:
    story, log = two_clients_chatting()
    log.append(message(3, "ann", "c1"))
    story.recv("ann", log[2]).recv("ben", log[2])
    report = run(story, log)
    assert "command c1 of ann applied 2 times" in what(report)


def test_acks_with_different_seqs_are_caught() -> None:
    story, log = two_clients_chatting()
    story.ack("ann", "c1", 2)
    assert "acked with different seqs [1, 2]" in what(run(story, log))


def test_a_late_answer_is_caught_and_a_close_is_an_answer() -> None:
    log = [message(1, "ann", "c1")]
    s = Story().connect("ann").at(1.0).send("ann", "c1")
    s.at(5.0).recv("ann", log[0]).ack("ann", "c1", 1)
    assert "command answered after 4.0s" in what(run(s, log, budget=2.0))

    closed = Story().connect("ann").at(1.0).send("ann", "c1").at(1.5).close("ann")
    closed.connect("ann", after=0).send("ann", "c1").recv("ann", log[0]).ack("ann", "c1", 1)
    assert run(closed, log, budget=2.0).ok


def test_silence_on_an_open_socket_is_caught() -> None:
    s = Story().connect("ann").at(1.0).send("ann", "c1").at(10.0)
    report = run(s, [], end=10.0)
    assert "command unanswered after 9.0s" in what(report)
    assert "neither an ack nor a final error" in what(report)


def test_a_paused_node_is_excused_until_it_thaws() -> None:
    log = [message(1, "ann", "c1")]
    s = Story().connect("ann", node="a").at(1.0).send("ann", "c1")
    s.at(5.0).recv("ann", log[0]).ack("ann", "c1", 1)
    assert run(s, log, budget=2.0, excuses=[Excuse("a", 0.5, 4.0)]).ok
    assert not run(s, log, budget=2.0, excuses=[Excuse("b", 0.5, 4.0)]).ok


def test_an_unavailable_error_then_a_retry_that_is_acked_passes() -> None:
    log = [message(1, "ann", "c1")]
    s = Story().connect("ann").send("ann", "c1").error("ann", "c1", "unavailable")
    s.send("ann", "c1").recv("ann", log[0]).ack("ann", "c1", 1)
    assert run(s, log).ok


def test_a_resent_command_refused_after_it_was_applied_is_caught() -> None:
    # Issue 8 hole 4 in the record: applied, the ack lost, the re-send refused.
    log = [message(1, "ann", "c1")]
    s = Story().connect("ann").send("ann", "c1").recv("ann", log[0]).close("ann")
    s.connect("ann", after=1).send("ann", "c1").error("ann", "c1", "rate_limited")
    assert "applied (seq 1) but answered rate_limited" in what(run(s, log))


def test_a_presence_ghost_is_caught() -> None:
    story, log = two_clients_chatting()
    story.close("ben", 1000)  # ben left, ann never heard of it
    report = run(story, log)
    assert "ghosts ['ben']" in what(report)
    assert report.counts["ghosts"] == 1
    story.recv("ann", {"type": "presence_diff", "joins": [], "leaves": ["ben"]})
    assert run(story, log).ok


def test_a_missing_member_in_presence_is_caught() -> None:
    s = Story().connect("ann").connect("ben", users=["ann", "ben"])
    report = run(s, [])
    assert "missing ['ben']" in what(report)


def test_a_client_that_fell_behind_is_caught() -> None:
    story, log = two_clients_chatting()
    log.append(message(3, "carl", "c3"))
    report = run(story, log)
    assert "saw up to seq 2, the log ends at 3" in what(report)


def test_a_hole_in_the_events_api_is_caught() -> None:
    log = [message(1, "ann", "c1"), message(3, "ann", "c3")]
    report = run(Story(), log)
    assert "events API has a hole: 1 then 3" in what(report)


@pytest.mark.parametrize("start", [0, 1])
def test_resume_after_a_position_expects_the_next_seq(start: int) -> None:
    log = [message(1, "ann", "c1"), message(2, "ann", "c2")]
    s = Story().connect("ben", after=start, last_seq=2)
    for e in log[start:]:
        s.recv("ben", e)
    assert run(s, log).ok
