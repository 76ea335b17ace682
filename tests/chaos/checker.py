"""The history checker: what every client saw, against the room's log and the contract.

Per room, from the journal of records (tests/chaos/recorder.py) and the events API's log:

- order: every client's durable seqs increase; a jump is allowed only across a ``gap`` frame
  that announces it (and a ``gap`` only after a fault that can lose data);
- agreement: every event a client saw equals the events API's event of that seq, and two
  clients never saw different events under one seq (seqs are never reused);
- exactly once: an acked command is in the log once, at the seq of its ack, and every ack of
  one client_id names the same seq;
- answers: every command got an ack or an error on its socket (or saw the socket close)
  within ``CHAT_SEND_TIMEOUT_MS`` + 1 s; none is left without a final answer;
- presence: at the end, every connected member's view equals the set of connected users.

It prints counts and, on failure, the first offending records.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos.recorder import CLOSE, COMMAND, CONNECT, CONNECT_FAILED, DURABLE, RECV, Record

Frame = dict[str, Any]
COMPARED = ("type", "id", "user", "body", "client_id")
SHOWN_PER_KIND = 3
# A violation's kind, from its text: the summary counts by kind and shows the first of each.
KINDS = (
    ("events API out of order", "log out of order"),
    ("events API has a hole", "hole in the log"),
    ("events API starts at", "hole in the log"),
    ("gap frame with no fault", "gap without a loss"),
    ("duplicate or reorder", "duplicate or reorder"),
    ("without a gap frame", "silent jump"),
    ("different events under seq", "seq reused"),
    ("another event than the events API", "seq reused"),
    ("holds another event", "seq reused"),
    ("the events API lacks it", "seen, then missing from the log"),
    ("is connected but saw up to", "not caught up"),
    ("command unanswered", "unanswered"),
    ("command answered after", "answered late"),
    ("neither an ack nor a final error", "never answered"),
    ("times", "applied twice"),
    ("never acked", "refused after it was applied"),
    ("acked with different seqs", "acks disagree"),
    ("is not in the log", "acked, then lost"),
    ("presence", "presence"),
)


def kind_of(what: str) -> str:
    return next((kind for text, kind in KINDS if text in what), "other")


@dataclass(frozen=True)
class Excuse:
    """A node that could not answer from ``start`` to ``end`` (SIGSTOP): commands sent to its
    sockets meanwhile are due ``budget`` after ``end`` instead."""

    node: str
    start: float
    end: float


@dataclass(frozen=True)
class Loss:
    """Redis lost data at ``at``: what was written from ``since`` on may be gone. A Redis
    restarted empty loses everything before it; a promoted replica only what it had not
    received. Guarantee 8: a loss is allowed, a reused seq or a silent hole is not."""

    at: float  # when the data went (a gap or a hole may follow from here on)
    since: float = float("-inf")
    # Until when an event written to the Redis that went could still reach a client: up to the
    # moment the new Redis serves (a node may deliver what it read just before). None: ``at``.
    through: float | None = None

    @property
    def until(self) -> float:
        return self.at if self.through is None else max(self.at, self.through)


@dataclass
class Rules:
    answer_budget_s: float  # CHAT_SEND_TIMEOUT_MS / 1000 + 1
    losses: list[Loss] = field(default_factory=list)
    excuses: list[Excuse] = field(default_factory=list)
    check_presence: bool = True
    require_caught_up: bool = True  # connected clients saw the log up to its end
    end: float | None = None  # when the history ends (default: its last record)

    def loss_after(self, t: float) -> bool:
        """Could something that happened at ``t`` be lost by a later loss of Redis data?"""
        return any(loss.since <= t <= loss.until for loss in self.losses)

    def loss_before(self, t: float) -> bool:
        return any(loss.at <= t for loss in self.losses)


@dataclass
class Violation:
    room: str
    what: str
    records: list[Record] = field(default_factory=list)
    events: list[Frame] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"[{self.room}] {self.what}"]
        lines += [f"    {r.short()}" for r in self.records[:6]]
        lines += [f"    log: {json.dumps(e, ensure_ascii=False)[:200]}" for e in self.events[:4]]
        return "\n".join(lines)


@dataclass
class Report:
    counts: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    max_answer_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        c = self.counts
        lines = [
            "history check: " + ("OK" if self.ok else f"{len(self.violations)} VIOLATIONS"),
            f"  rooms {c['rooms']}, clients {c['clients']}, sockets {c['sockets']}, "
            f"reconnects {c['reconnects']}, failed connects {c['connect_failed']}",
            f"  commands sent {c['commands_sent']} ({c['distinct_commands']} distinct), "
            f"acked {c['acked']}, refused {c['refused']}, errors {c['errors']} "
            f"{dict(sorted(self.error_codes().items()))}, slowest answer {self.max_answer_s:.2f}s",
            f"  durable events: log {c['log_events']}, received {c['received']}, "
            f"gap frames {c['gaps']}, closes {dict(sorted(self.close_codes().items()))}",
            f"  acked lost {c['acked_lost']} "
            f"(+ {c['acked_lost_allowed']} lost with Redis's data, allowed by guarantee 8), "
            f"duplicated {c['duplicated']}, reordered {c['reordered']}, "
            f"unanswered {c['unanswered']}, presence ghosts {c['ghosts']}, "
            f"presence missing {c['presence_missing']}",
        ]
        kinds = Counter(kind_of(v.what) for v in self.violations)
        if kinds:
            lines.append("  violations by kind: " + ", ".join(f"{k} {n}" for k, n in kinds.items()))
        shown: Counter[str] = Counter()
        for v in self.violations:  # the first offending records of each kind
            kind = kind_of(v.what)
            shown[kind] += 1
            if shown[kind] <= SHOWN_PER_KIND:
                lines.append(v.describe())
        return "\n".join(lines)

    def error_codes(self) -> Counter[str]:
        return Counter({k[6:]: v for k, v in self.counts.items() if k.startswith("error_")})

    def close_codes(self) -> Counter[str]:
        return Counter({k[6:]: v for k, v in self.counts.items() if k.startswith("close_")})


def check(records: Iterable[Record], logs: dict[str, list[Frame]], rules: Rules) -> Report:
    """Check a run: ``logs`` is each room's log from the events API, after the run."""
    records = sorted(records, key=lambda r: r.t)
    report = Report()
    end = rules.end if rules.end is not None else max((r.t for r in records), default=0.0)
    by_room: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_room[record.room].append(record)
    for room in sorted(set(by_room) | set(logs)):
        report.counts["rooms"] += 1
        _RoomCheck(room, by_room.get(room, []), logs.get(room, []), rules, report, end).run()
    return report


class _RoomCheck:
    def __init__(self, room: str, records: list[Record], log: list[Frame], rules: Rules,
                 report: Report, end: float) -> None:  # fmt: skip
        self.room, self.records, self.log, self.rules = room, records, log, rules
        self.report, self.end = report, end
        self.count = report.counts
        self.by_seq: dict[int, Frame] = {}
        self.by_client: dict[str, list[Record]] = defaultdict(list)
        for record in records:
            self.by_client[record.client].append(record)
        # socket -> (node, user) from its hello; sockets with no hello never opened
        self.hello: dict[tuple[str, int], Frame] = {}
        for r in records:
            if r.kind == RECV and r.frame and r.frame.get("type") == "hello":
                self.hello[(r.client, r.socket)] = r.frame

    def fail(self, what: str, records: list[Record] | None = None,
             events: list[Frame] | None = None) -> None:  # fmt: skip
        self.report.violations.append(Violation(self.room, what, records or [], events or []))

    def run(self) -> None:
        self.check_log()
        self.count["clients"] += len(self.by_client)
        first_seen: dict[int, tuple[Frame, Record]] = {}
        for client, records in self.by_client.items():
            self.check_client_order(client, records)
            self.check_agreement(records, first_seen)
            self.check_answers(records)
            self.check_caught_up(client, records)
        self.check_acks()
        if self.rules.check_presence:
            self.check_presence()

    # -- the log itself ---------------------------------------------------------------------

    def check_log(self) -> None:
        seqs = [int(e["seq"]) for e in self.log]
        self.count["log_events"] += len(seqs)
        for e in self.log:
            self.by_seq[int(e["seq"])] = e
        for i, (a, b) in enumerate(itertools.pairwise(seqs)):
            if b <= a:
                self.fail(f"events API out of order: seq {b} after {a}", events=self.log[i : i + 2])
                return
            if b != a + 1 and not self.rules.losses:
                self.fail(f"events API has a hole: {a} then {b}", events=self.log[i : i + 2])
                return
        if seqs and seqs[0] != 1 and not self.rules.losses:
            self.fail(f"events API starts at seq {seqs[0]}", events=self.log[:1])

    # -- what each client saw ---------------------------------------------------------------

    def check_client_order(self, client: str, records: list[Record]) -> None:
        position: int | None = None  # the last seq this client has (or was told it may skip)
        gap: tuple[int, Record] | None = None  # an announced hole since the last event
        for r in records:
            if r.kind == CONNECT:
                self.count["sockets"] += 1
                if r.socket > 0:
                    self.count["reconnects"] += 1
                after = (r.frame or {}).get("after")
                if after is not None:
                    position = int(after)  # the client asks for everything after it
                gap = None
            elif r.kind == CONNECT_FAILED:
                self.count["connect_failed"] += 1
            elif r.kind == CLOSE:
                self.count[f"close_{r.code}"] += 1
            if r.kind != RECV or r.frame is None:
                continue
            kind = r.frame.get("type")
            if kind == "hello" and position is None:
                position = int(r.frame.get("last_seq") or 0)
            elif kind == "gap":
                self.count["gaps"] += 1
                first = int(r.frame.get("first_available", 0))
                if not self.rules.loss_before(r.t):
                    self.fail("gap frame with no fault that could lose data before it", [r])
                gap = (first, r)
            elif kind in DURABLE:
                self.count["received"] += 1
                seq = int(r.frame["seq"])
                if position is not None and seq <= position:
                    self.count["reordered" if seq < position else "duplicated"] += 1
                    self.fail(f"{client} got seq {seq} after {position} (duplicate or reorder)",
                              [r])  # fmt: skip
                elif position is not None and seq > position + 1:
                    if gap is None or gap[0] < seq:
                        self.count["unannounced_jump"] += 1
                        self.fail(
                            f"{client} jumped from seq {position} to {seq} without a gap frame"
                            + (f" (gap said first_available={gap[0]})" if gap else ""),
                            [r] + ([gap[1]] if gap else []),
                            [e for s, e in self.by_seq.items() if position < s < seq][:3],
                        )
                position = seq if position is None else max(position, seq)
                gap = None

    def check_agreement(self, records: list[Record],
                        first_seen: dict[int, tuple[Frame, Record]]) -> None:  # fmt: skip
        for r in records:
            if r.kind != RECV or r.frame is None or r.frame.get("type") not in DURABLE:
                continue
            seq = int(r.frame["seq"])
            mine = _key(r.frame)
            if seq in first_seen and _key(first_seen[seq][0]) != mine:
                self.count["seq_reused"] += 1
                self.fail(f"two clients saw different events under seq {seq}",
                          [first_seen[seq][1], r])  # fmt: skip
            first_seen.setdefault(seq, (r.frame, r))
            logged = self.by_seq.get(seq)
            if logged is None:
                if self.rules.loss_after(r.t):
                    self.count["seen_then_lost"] += 1
                else:
                    self.fail(f"a client saw seq {seq}, the events API lacks it", [r])
            elif _key(logged) != mine:
                self.count["seq_reused"] += 1
                self.fail(f"seq {seq}: the client saw another event than the events API",
                          [r], [logged])  # fmt: skip

    def check_caught_up(self, client: str, records: list[Record]) -> None:
        if not self.rules.require_caught_up or not self.log or not _open_at_end(records):
            return
        seen = [int(r.frame["seq"]) for r in records
                if r.kind == RECV and r.frame and r.frame.get("type") in DURABLE]  # fmt: skip
        last_logged = int(self.log[-1]["seq"])
        if max(seen, default=0) < last_logged:
            last_hello = next((r for r in reversed(records) if r.kind == RECV and r.frame
                               and r.frame.get("type") == "hello"), None)  # fmt: skip
            if last_hello and int(last_hello.frame.get("last_seq") or 0) >= last_logged:  # type: ignore[union-attr]
                return  # joined after the last event: nothing to see
            self.fail(f"{client} is connected but saw up to seq {max(seen, default=0)}, "
                      f"the log ends at {last_logged}", records[-3:])  # fmt: skip

    # -- commands ---------------------------------------------------------------------------

    def check_answers(self, records: list[Record]) -> None:
        budget = self.rules.answer_budget_s
        waiting: dict[tuple[int, str], list[Record]] = defaultdict(list)
        for r in records:
            if r.kind == COMMAND and r.frame is not None:
                self.count["commands_sent"] += 1
                waiting[(r.socket, str(r.frame.get("client_id")))].append(r)
            elif r.kind == RECV and r.frame and r.frame.get("type") in ("ack", "error"):
                if r.frame["type"] == "error":
                    self.count["errors"] += 1
                    self.count[f"error_{r.frame.get('code')}"] += 1
                queue = waiting.get((r.socket, str(r.frame.get("client_id"))))
                if queue:
                    self._answered(queue.pop(0), r.t, r)
            elif r.kind == CLOSE:
                for (socket, _), queue in waiting.items():
                    if socket == r.socket:
                        while queue:
                            self._answered(queue.pop(0), r.t, r)
        for queue in waiting.values():
            for command in queue:
                if self.end - command.t > self._deadline(command) - command.t:
                    self.count["unanswered"] += 1
                    self.fail(f"command unanswered after {self.end - command.t:.1f}s "
                              f"(budget {budget:.1f}s), socket still open", [command])  # fmt: skip

    def _deadline(self, command: Record) -> float:
        budget = self.rules.answer_budget_s
        deadline = command.t + budget
        node = (self.hello.get((command.client, command.socket)) or {}).get("node")
        for excuse in self.rules.excuses:
            if excuse.node == node and excuse.start - budget <= command.t <= excuse.end:
                deadline = max(deadline, excuse.end + budget)
        return deadline

    def _answered(self, command: Record, t: float, answer: Record) -> None:
        took = t - command.t
        self.report.max_answer_s = max(self.report.max_answer_s, took)
        if t > self._deadline(command):
            self.count["unanswered"] += 1
            self.fail(f"command answered after {took:.1f}s "
                      f"(budget {self.rules.answer_budget_s:.1f}s)", [command, answer])  # fmt: skip

    def check_acks(self) -> None:
        commands: dict[tuple[str, str], Record] = {}  # (user, client_id) -> first command
        acks: dict[tuple[str, str], list[Record]] = defaultdict(list)
        refusals: dict[tuple[str, str], Record] = {}
        for r in self.records:
            if r.frame is None:
                continue
            user = (self.hello.get((r.client, r.socket)) or {}).get("user", r.client)
            key = (str(user), str(r.frame.get("client_id")))
            if r.kind == COMMAND:
                commands.setdefault(key, r)
            elif r.kind == RECV and r.frame.get("type") == "ack":
                acks[key].append(r)
            elif r.kind == RECV and r.frame.get("type") == "error" and key in commands:
                if r.frame.get("code") != "unavailable":
                    refusals.setdefault(key, r)
        self.count["distinct_commands"] += len(commands)
        in_log: dict[tuple[str, str], list[Frame]] = defaultdict(list)
        for e in self.log:
            if e.get("client_id"):
                in_log[(str(e.get("user")), str(e["client_id"]))].append(e)
        for key, events in in_log.items():
            if len(events) > 1:
                self.count["duplicated"] += 1
                self.fail(f"command {key[1]} of {key[0]} applied {len(events)} times",
                          [commands[key]] if key in commands else [], events)  # fmt: skip
        for key, command in commands.items():
            got = acks.get(key, [])
            if not got:
                if key in refusals:
                    self.count["refused"] += 1
                    if key in in_log:
                        self.fail(f"command applied (seq {in_log[key][0]['seq']}) but answered "
                                  f"{refusals[key].frame.get('code')}, never acked",  # type: ignore[union-attr]
                                  [command, refusals[key]], in_log[key])  # fmt: skip
                else:
                    self.count["never_answered"] += 1
                    self.fail("command has neither an ack nor a final error at the end",
                              [command])  # fmt: skip
                continue
            self.count["acked"] += 1
            seqs = {int(a.frame["seq"]) for a in got}  # type: ignore[index]
            if len(seqs) > 1:
                self.count["duplicated"] += 1
                self.fail(f"command acked with different seqs {sorted(seqs)}", [command, *got])
            seq = int(got[0].frame["seq"])  # type: ignore[index]
            logged = self.by_seq.get(seq)
            if logged is None:
                if self.rules.loss_after(got[0].t):
                    self.count["acked_lost_allowed"] += 1
                else:
                    self.count["acked_lost"] += 1
                    self.fail(f"acked seq {seq} is not in the log", [command, got[0]])
                continue
            want = {"send": "message", "edit": "edit", "delete": "delete"}[command.frame["type"]]  # type: ignore[index]
            same = logged.get("type") == want and (
                logged.get("client_id") == key[1]
                if want == "message"
                else logged.get("id") == command.frame.get("id")  # type: ignore[union-attr]
            )
            if not same:
                self.count["seq_reused"] += 1
                self.fail(f"acked seq {seq} holds another event in the log", [command, got[0]],
                          [logged])  # fmt: skip

    # -- presence ---------------------------------------------------------------------------

    def check_presence(self) -> None:
        views: dict[tuple[str, int], set[str]] = {}
        open_sockets: set[tuple[str, int]] = set()
        for r in self.records:
            key = (r.client, r.socket)
            if r.kind == RECV and r.frame is not None:
                kind = r.frame.get("type")
                if kind == "hello":
                    open_sockets.add(key)
                elif kind == "presence_state":
                    views[key] = set(r.frame.get("users", []))
                elif kind == "presence_diff":
                    view = views.setdefault(key, set())
                    view |= set(r.frame.get("joins", []))
                    view -= set(r.frame.get("leaves", []))
            elif r.kind == CLOSE:
                open_sockets.discard(key)
        connected = {str(self.hello[k].get("user")) for k in open_sockets if k in self.hello}
        for key in sorted(open_sockets):
            view = views.get(key, set())
            ghosts, missing = view - connected, connected - view
            self.count["ghosts"] += len(ghosts)
            self.count["presence_missing"] += len(missing)
            if ghosts or missing:
                last = [r for r in self.records if (r.client, r.socket) == key
                        and r.kind == RECV and str(r.frame.get("type", "")).startswith("presence")]  # type: ignore[union-attr]  # fmt: skip
                self.fail(f"{key[0]}#{key[1]} presence {sorted(view)} but connected "
                          f"{sorted(connected)}: ghosts {sorted(ghosts)}, missing "
                          f"{sorted(missing)}", last[-3:])  # fmt: skip


def _key(event: Frame) -> tuple[Any, ...]:
    return tuple(event.get(k) for k in COMPARED)


def _open_at_end(records: list[Record]) -> bool:
    for r in reversed(records):
        if r.kind == CLOSE:
            return False
        if r.kind == RECV and r.frame and r.frame.get("type") == "hello":
            return True
    return False


# -- a run kept on disk, checked again later (python -m tests.chaos.checker FILE) -----------


def save(path: Path, records: Iterable[Record], logs: dict[str, list[Frame]], rules: Rules,
         faults: list[tuple[float, str]] | None = None) -> None:  # fmt: skip
    data = {
        "faults": faults or [],  # for the reader: what happened when (same clock)
        "records": [dataclasses.asdict(r) for r in records],
        "logs": logs,
        "rules": {
            **dataclasses.asdict(rules),
            "losses": [[loss.at, loss.since, loss.through] for loss in rules.losses],
        },
    }
    path.write_text(json.dumps(data, ensure_ascii=False))


def load(path: Path) -> tuple[list[Record], dict[str, list[Frame]], Rules]:
    data = json.loads(path.read_text())
    rules = data["rules"]
    rules["losses"] = [Loss(*loss) for loss in rules["losses"]]
    rules["excuses"] = [Excuse(**e) for e in rules["excuses"]]
    return [Record(**r) for r in data["records"]], data["logs"], Rules(**rules)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a saved chaos history again.")
    parser.add_argument("history", type=Path, help="history.json from a campaign's directory")
    args = parser.parse_args(argv)
    records, logs, rules = load(args.history)
    report = check(records, logs, rules)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
