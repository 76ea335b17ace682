"""The ``pauses`` scenario: fail-over (SIGKILL) and drain (SIGTERM) of one node under the S1 load.

Project: a third ``runnode`` joins, 20 rooms × 50 members connect over the three nodes (two
senders per room, on two different nodes), and the S1 load runs at a good rate. Then, one phase
each, bounded in time:

- failover: SIGKILL the node owning the most rooms. Senders on the survivors keep sending (their
  node retries while the room changes owner; an ``unavailable`` error is answered by re-sending
  the same client_id); every client of the killed node reconnects to a survivor with ``after=``
  its last seq and re-sends what was not acked. Per room the pause is the time from the kill to
  the first ack of a send made at or after the kill; goal: ≤ CHAT_LEASE_TTL_MS + 1 s.
- drain: SIGTERM the node owning the most rooms, the load still on; clients closed with 1012
  resume elsewhere. Per room the hand-off pause is the longest stall: the longest interval in
  which a command of the room waited for its ack and no ack of the room arrived, within
  [SIGTERM − 0.2 s, exit + 1 s]; goal: p99 < 200 ms.

In both: every acked message must reach every member exactly once (members stayed connected or
resumed). The killed or drained node is replaced by a fresh one afterwards, and the third node
leaves at the end, so the harness continues on two nodes.

Peers (no owners, at-most-once): SIGKILL one of the two servers under the same load; its clients
reconnect to the other server and join again. Reported: how long until each of them receives
again, and the share of deliveries lost (counted over the members connected at the end).

The checker functions at the top are pure and unit-tested (tests/test_bench_pauses.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import random
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import websockets

from bench.clients import BODY_BYTES, Client, Tally, make_body
from bench.loadgen import LoopLag
from bench.proc import load_average, own_cpu
from bench.systems import ProjectSystem, System

DRAIN_GOAL_P99_MS = 200.0
DRAIN_WINDOW_BEFORE_S = 0.2
DRAIN_WINDOW_AFTER_S = 1.0
DEFAULT_LEASE_TTL_MS = 3000  # chatsite.settings' default when CHAT_LEASE_TTL_MS is not set
RETRY_MIN_S, RETRY_MAX_S = 0.25, 0.5  # the web page's first reconnect delay (BACKOFF_BASE_MS)
DEFAULT_RATE = 2000  # deliveries/s, lowered to the highest good S1 rate of the run if below
# A "-clientless" phase hits a node without sockets (the fresh node that replaced the last
# victim, once it took the rooms that prefer it): the mechanism alone, no reconnection storm.
PHASES = ("failover", "drain-clientless", "drain", "failover-clientless")


# -- the checker (pure)


@dataclass
class Command:
    """One send: when the user made it and when (if ever) its first ack came (monotonic s)."""

    room: str
    client_id: str
    sent_at: float
    acked_at: float | None = None
    seq: int | None = None


def _check_time(value: float, what: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise ValueError(f"{what} must be a number, got {value!r}")


def _check_commands(commands: Sequence[Command]) -> None:
    for command in commands:
        _check_time(command.sent_at, "sent_at")
        if command.acked_at is not None:
            _check_time(command.acked_at, "acked_at")
            if command.acked_at < command.sent_at:
                raise ValueError(f"{command.client_id}: acked before it was sent")


def first_ack_after(commands: Sequence[Command], moment: float) -> float | None:
    """Seconds from ``moment`` to the first ack of a command sent at or after it (None: none
    acked). Acks of earlier sends do not count: they may have left the old owner before it died."""
    _check_time(moment, "moment")
    _check_commands(commands)
    acks = [c.acked_at for c in commands if c.sent_at >= moment and c.acked_at is not None]
    return min(acks) - moment if acks else None


def longest_stall(commands: Sequence[Command], start: float, end: float) -> float:
    """The longest interval within [start, end] during which some command waited for its ack and
    no ack arrived (0.0 when nothing waited). A command still unacked at ``end`` waits until
    ``end``. With a sequential sender it is the longest send→ack time; with several it is "the
    room gave no ack while someone was waiting"."""
    _check_time(start, "start")
    _check_time(end, "end")
    if end < start:
        raise ValueError("end before start")
    _check_commands(commands)
    live = [c for c in commands if c.sent_at <= end and (c.acked_at is None or c.acked_at > start)]
    acks = sorted({c.acked_at for c in live if c.acked_at is not None and c.acked_at <= end})
    bounds = [start, *acks, end]
    longest = 0.0
    for left, right in itertools.pairwise(bounds):
        # No ack lies strictly inside (left, right): who waits there waits until right at least.
        waiting = [
            c.sent_at
            for c in live
            if c.sent_at < right and (c.acked_at is None or c.acked_at >= right)
        ]
        if waiting:
            longest = max(longest, right - max(left, min(waiting)))
    return longest


def summary_ms(values: Sequence[float | None]) -> dict[str, Any]:
    """n, median, p99, max in ms of durations in seconds; a None (never happened) counts as
    ``missing`` and is left out of the figures."""
    known = sorted(v for v in values if v is not None)
    out: dict[str, Any] = {"n": len(values), "missing": len(values) - len(known)}
    if not known:
        return {**out, "median_ms": None, "p99_ms": None, "max_ms": None}
    middle = len(known) // 2
    median = known[middle] if len(known) % 2 else (known[middle - 1] + known[middle]) / 2
    return {
        **out,
        "median_ms": round(median * 1000, 1),
        "p99_ms": round(known[min(len(known) - 1, int(0.99 * len(known)))] * 1000, 1),
        "max_ms": round(known[-1] * 1000, 1),
    }


@dataclass
class Receipts:
    """What one member received of a phase's messages: client_id → how many times."""

    room: str
    name: str
    counts: Counter[str]
    live: bool = True  # stayed connected or resumed: it is owed every acked message


def delivery_check(
    acked: Mapping[str, Mapping[str, int]], members: Iterable[Receipts]
) -> dict[str, Any]:
    """Every acked message (room → client_id → seq) delivered exactly once to every live member
    of its room. Lost: owed but not received; duplicates: received more than once."""
    expected = delivered = lost = duplicates = unacked_received = not_live = 0
    samples: list[str] = []
    for member in members:
        if not isinstance(member.counts, Counter):
            raise ValueError(f"{member.name}: counts must be a Counter")
        if any(count < 1 for count in member.counts.values()):
            raise ValueError(f"{member.name}: a count below 1")
        owed = acked.get(member.room, {})
        duplicates += sum(count - 1 for count in member.counts.values())
        unacked_received += sum(1 for cid in member.counts if cid not in owed)
        if not member.live:
            not_live += 1
            continue
        expected += len(owed)
        missing = [cid for cid in owed if cid not in member.counts]
        delivered += len(owed) - len(missing)
        lost += len(missing)
        if missing and len(samples) < 5:
            samples.append(f"{member.room}/{member.name}: {len(missing)} missing ({missing[0]}…)")
    return {
        "acked": sum(len(ids) for ids in acked.values()),
        "expected": expected,
        "delivered": delivered,
        "lost": lost,
        "duplicates": duplicates,
        "received_unacked": unacked_received,
        "members_not_resumed": not_live,
        "loss_samples": samples,
    }


def pick_victim(
    owners: Mapping[str, str | None], rooms: Iterable[str], candidates: list[str]
) -> str:
    """The candidate node owning the most of ``rooms`` (the first candidate on a tie)."""
    if not candidates:
        raise ValueError("no candidate node")
    owned = Counter(owners.get(room) for room in rooms)
    return max(candidates, key=lambda name: (owned.get(name, 0), -candidates.index(name)))


# -- the project's clients


class Member:
    """One member of a room on the project: resumes on another node with ``after=`` when its
    socket closes, and re-sends its unacked commands with the same client_id. Its reader task
    and reconnect task are its own; ``close`` ends both."""

    def __init__(self, index: int, room: str, view: NodeView, slot: int) -> None:
        self.index = index
        self.room = room
        self.name = f"p{index}"
        self.view = view
        self.slot = slot
        self.ws: Any = None
        self.last_seq = 0
        self.prefix = ""  # the current phase's client_id prefix
        self.counts: Counter[str] = Counter()
        self.pending: dict[str, Command] = {}
        self.commands: list[Command] = []
        self.closes: Counter[str] = Counter()
        self.resumed_at: list[float] = []
        self.errors: Counter[str] = Counter()
        self.out_of_order = 0
        self.gaps = 0
        self.conflicting_acks = 0
        self.live = True
        self._closing = False
        self._reader: asyncio.Task[None] | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self._retries: list[asyncio.Task[None]] = []

    @property
    def connected(self) -> bool:
        return self.ws is not None and self._reader is not None and not self._reader.done()

    async def connect(self, timeout: float, *, resume: bool = False) -> None:
        """Connect to the current slot (first time) or to another live node (resume)."""
        deadline = time.monotonic() + timeout
        tried = 0
        while True:
            if resume or tried:
                self.slot = self.view.next_slot(self.slot, self.index + tried)
            url = self.view.url(self.slot, self.room, self.name, self.last_seq if resume else None)
            try:
                async with asyncio.timeout(max(0.5, min(10.0, deadline - time.monotonic()))):
                    ws = await websockets.connect(
                        url, compression=None, ping_interval=None, close_timeout=2,
                        max_size=2**22, max_queue=None, user_agent_header=None,
                    )  # fmt: skip
                    try:
                        hello = json.loads(await ws.recv())
                    except BaseException:
                        await ws.close()
                        raise
                break
            except (TimeoutError, OSError, websockets.WebSocketException, ValueError):
                tried += 1
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        if not resume:
            self.last_seq = int(hello.get("last_seq") or 0)
        else:
            self.resumed_at.append(time.monotonic())
        self.ws = ws
        self._reader = asyncio.get_running_loop().create_task(self._read(ws))
        for command in list(self.pending.values()):  # re-send, same client_id
            await self._send(command)

    async def submit(self, command: Command) -> None:
        """Send now if connected; else it goes out with the others when the socket resumes."""
        self.commands.append(command)
        self.pending[command.client_id] = command
        if self.connected:
            await self._send(command)

    async def _send(self, command: Command) -> None:
        ws = self.ws
        if ws is None:
            return
        body = f"~{command.client_id}~".ljust(BODY_BYTES, "x")  # a re-send is the same text
        text = f'{{"type":"send","body":"{body}","client_id":"{command.client_id}"}}'
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(text)

    async def _read(self, ws: Any) -> None:
        try:
            async for raw in ws:
                if '"presence_' in raw or '"typing"' in raw:
                    continue  # not counted here, and the storms of them are many
                self._on_frame(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closes[str(ws.close_code or "lost")] += 1
            if not self._closing:
                self.ws = None
                self._reconnect = asyncio.get_running_loop().create_task(self._resume())

    async def _resume(self) -> None:
        # as the web page (static/chat/chat.js) does: a first retry after 250-500 ms
        await asyncio.sleep(random.uniform(RETRY_MIN_S, RETRY_MAX_S))
        try:
            await self.connect(20.0, resume=True)
        except (TimeoutError, OSError, websockets.WebSocketException, ValueError):
            self.live = False  # could not resume: not owed anything, and counted

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "message":
            seq = int(frame["seq"])
            if seq <= self.last_seq:
                self.out_of_order += 1
            self.last_seq = max(self.last_seq, seq)
            client_id = str(frame.get("client_id") or "")
            if self.prefix and client_id.startswith(self.prefix):
                self.counts[client_id] += 1
        elif kind == "ack":
            command = self.pending.pop(str(frame.get("client_id")), None)
            if command is not None:
                command.acked_at = time.monotonic()
                command.seq = int(frame["seq"])
            else:
                known = next(
                    (c for c in self.commands if c.client_id == frame.get("client_id")), None
                )
                if known is not None and known.seq is not None and known.seq != frame.get("seq"):
                    self.conflicting_acks += 1
        elif kind == "error":
            code = str(frame.get("code"))
            self.errors[code] += 1
            command = self.pending.get(str(frame.get("client_id")))
            if command is not None and code == "unavailable":
                # the protocol: re-send the same client_id (its node already retried a while)
                self._retries.append(asyncio.get_running_loop().create_task(self._later(command)))
        elif kind == "gap":
            self.gaps += 1

    async def _later(self, command: Command) -> None:
        await asyncio.sleep(0.1)
        if command.client_id in self.pending and self.connected:
            await self._send(command)

    async def close(self) -> None:
        self._closing = True
        for task in [self._reconnect, *self._retries]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


class NodeView:
    """The nodes taking traffic, as a load balancer sees them (a killed or draining node is
    taken out when the harness kills or drains it)."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.live: list[int] = list(range(len(system.ports)))

    def url(self, slot: int, room: str, name: str, after: int | None) -> str:
        return self.system.ws_url(slot, room, name, after=after)

    def next_slot(self, current: int, salt: int) -> int:
        others = [slot for slot in self.live if slot != current] or self.live
        return others[salt % len(others)]


# -- the load


@dataclass
class Load:
    """The S1 schedule over the members: senders take turns, one message per tick."""

    senders: list[Member]
    message_rate: float
    prefix: str
    sent: int = 0
    task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        begin = loop.time()
        while not self._stop.is_set():
            due = int((loop.time() - begin) * self.message_rate) + 1
            while self.sent < due:
                sender = self.senders[self.sent % len(self.senders)]
                client_id = f"{self.prefix}{sender.index}-{self.sent}"
                await sender.submit(Command(sender.room, client_id, time.monotonic()))
                self.sent += 1
            delay = begin + self.sent / self.message_rate - loop.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, delay)):
                    await self._stop.wait()

    async def stop(self) -> None:
        self._stop.set()
        if self.task is not None:
            await self.task


# -- the scenario


@dataclass
class PausePlan:
    before_s: float = 3.0  # load before the kill or SIGTERM
    after_extra_s: float = 3.0  # load after the budget (fail-over) or the exit (drain)
    settle_s: float = 16.0  # after the load: every ack, every delivery, every resume (20 s)
    phase_s: float = 90.0  # one phase, its settling and the replacement node included
    budget_s: float = 300.0  # the whole scenario on one system


def lease_ttl_ms(system: System) -> int:
    env = getattr(getattr(system, "cluster", None), "env", {})
    return int(env.get("CHAT_LEASE_TTL_MS") or DEFAULT_LEASE_TTL_MS)


def good_rate(s1_records: list[dict[str, Any]]) -> tuple[int, str]:
    """The pauses load's rate: DEFAULT_RATE, or the highest good S1 rate of the run if lower."""
    steps = [r for r in s1_records if r.get("kind") == "step"]
    good = [int(r["offered_target"]) for r in steps if r.get("good")]
    if not steps:
        return DEFAULT_RATE, "default (S1 not run)"
    if not good:
        return min(int(r["offered_target"]) for r in steps), "lowest S1 step (none was good)"
    best = max(good)
    if best < DEFAULT_RATE:
        return best, "highest good S1 rate of this run"
    return DEFAULT_RATE, f"default (S1 good up to {best})"


async def run(
    system: System, rooms: list[str], s1_records: list[dict[str, Any]], plan: PausePlan
) -> list[dict[str, Any]]:
    """Every record of the scenario on ``system``; bounded by ``plan.budget_s``."""
    rate, why = good_rate(s1_records)
    base = {
        "system": system.name,
        "scenario": "pauses",
        "offered_target": rate,
        "rate_from": why,
    }
    records: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(plan.budget_s):
            if isinstance(system, ProjectSystem):
                await _project(system, rooms, rate, plan, base, records)
            else:
                records.append(await _peer(system, rooms, rate, plan, base))
    except Exception as exc:  # a failed phase keeps the records of the others
        error = "time budget exceeded" if isinstance(exc, TimeoutError) else repr(exc)[:500]
        records.append({**base, "kind": "pause", "phase": "error", "error": error})
    return records


async def _owners(system: System, view: NodeView) -> dict[str, str | None]:
    from tests.support.nodes import http_get

    for slot in view.live:
        url = f"http://127.0.0.1:{system.ports[slot]}/api/cluster/"
        with contextlib.suppress(OSError, ValueError):
            status, body = await asyncio.to_thread(http_get, url, 3.0)
            if status == 200 and isinstance(body, dict):
                return {r["slug"]: r.get("owner") for r in body.get("rooms", [])}
    return {}


async def _project(
    system: ProjectSystem,
    rooms: list[str],
    rate: int,
    plan: PausePlan,
    base: dict[str, Any],
    records: list[dict[str, Any]],
) -> None:
    third = await asyncio.to_thread(system.add_node)
    view = NodeView(system)
    members = [
        Member(1_000_000 + r * 100 + m, room, view, slot=(m + r) % len(view.live))
        for r, room in enumerate(rooms)
        for m in range(50)
    ]
    try:
        started = time.monotonic()
        gate = asyncio.Semaphore(50)

        async def join(member: Member) -> None:
            async with gate:
                with contextlib.suppress(Exception):
                    await member.connect(30.0)

        await asyncio.gather(*(join(member) for member in members))
        joined = [m for m in members if m.connected]
        connect_s = time.monotonic() - started
        await asyncio.sleep(2.0)  # presence settles
        # a room's two senders half a turn apart: one send per room every 0.5 s at 2,000/s,
        # which is the resolution of the fail-over pause
        pairs = [[x for x in joined if x.room == room][:2] for room in rooms]
        senders = [pair[0] for pair in pairs if pair] + [pair[1] for pair in pairs if len(pair) > 1]
        common = {**base, "sockets": len(members), "connected": len(joined), "nodes": 3}
        common["connect_s"] = round(connect_s, 1)
        for phase in PHASES:
            try:
                async with asyncio.timeout(plan.phase_s):
                    record = await _phase(system, view, phase, joined, senders, rooms, rate, plan)
            except TimeoutError:
                records.append(
                    {**common, "kind": "pause", "phase": phase, "error": "phase timed out"}
                )
                break  # the cluster is in an unknown state: no further phase
            records.append({**common, **record})
    finally:
        await asyncio.gather(*(m.close() for m in members))
        # the harness goes on (the profile uses slot 0): no slot may be left with a dead node
        for slot in range(len(system.ports)):
            with contextlib.suppress(Exception):
                if not system.node_alive(slot):
                    await asyncio.to_thread(system.replace_node, slot)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(system.retire_node, third)


async def _phase(
    system: ProjectSystem,
    view: NodeView,
    phase: str,
    members: list[Member],
    senders: list[Member],
    rooms: list[str],
    rate: int,
    plan: PausePlan,
) -> dict[str, Any]:
    ttl_ms = lease_ttl_ms(system)
    busy = {m.slot for m in members if m.connected}
    clientless = phase.endswith("-clientless")
    candidates = [s for s in view.live if (s not in busy) == clientless]
    if not candidates:
        return {
            "kind": "pause",
            "phase": phase,
            "error": "no node fits (clients: {not clientless})",
        }
    prefix = f"{phase[0].upper()}{int(time.monotonic() * 1000) % 10**8}-"
    for member in members:
        member.prefix = prefix
        member.counts = Counter()
        member.commands = []
        member.pending = {}
        member.closes = Counter()
        member.resumed_at = []
        member.errors = Counter()
    load = Load(senders, message_rate(rate), prefix)
    lag = LoopLag()
    cpu_before, wall_before = own_cpu(), time.monotonic()
    load.start()
    try:
        await asyncio.sleep(plan.before_s)
        owners = await _owners(system, view)
        names = {system.node_name(s): s for s in candidates}
        victim_name = pick_victim(owners, rooms, list(names))
        victim = names[victim_name]
        affected = [room for room in rooms if owners.get(room) == victim_name]
        view.live.remove(victim)  # the load balancer stops sending it anyone
        on_victim = [m for m in members if m.slot == victim and m.connected]
        event_at = time.monotonic()
        if phase.startswith("failover"):
            await asyncio.to_thread(system.kill_node, victim)
            exit_code: int | None = -9
            exited_at = event_at
            await asyncio.sleep(ttl_ms / 1000 + 1 + plan.after_extra_s)
        else:
            exit_code = await asyncio.to_thread(system.drain_node, victim, 30.0)
            exited_at = time.monotonic()
            await asyncio.sleep(DRAIN_WINDOW_AFTER_S + plan.after_extra_s)
    finally:
        await load.stop()
        load_end = time.monotonic()
        generator_share = (own_cpu() - cpu_before) / (load_end - wall_before)
        lag_max = max(lag.samples, default=None)
        lag_p99 = await lag.stop()
    # every command answered, every acked message delivered (or the settle time is up)
    deadline = load_end + plan.settle_s
    while time.monotonic() < deadline and not _complete(members):
        await asyncio.sleep(0.1)
    by_room: dict[str, list[Command]] = {room: [] for room in rooms}
    stayed: dict[str, list[Command]] = {room: [] for room in rooms}  # senders not on the victim
    moved = {id(m) for m in on_victim}
    for member in members:
        by_room[member.room].extend(member.commands)
        if id(member) not in moved:
            stayed[member.room].extend(member.commands)
    acked = {
        room: {c.client_id: c.seq or 0 for c in commands if c.acked_at is not None}
        for room, commands in by_room.items()
    }
    # owed every acked message: the members connected now (they stayed, or resumed); one still
    # reconnecting when the settle time ran out is counted apart (members_not_resumed)
    check = delivery_check(
        acked, [Receipts(m.room, m.name, m.counts, m.connected) for m in members]
    )
    resumed = [m.resumed_at[0] - event_at for m in on_victim if m.resumed_at]
    record: dict[str, Any] = {
        "kind": "pause",
        "phase": phase,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg": load_average(),
        "lease_ttl_ms": ttl_ms,
        "victim": victim_name,
        "victim_exit_code": exit_code,
        "rooms": len(rooms),
        "affected_rooms": len(affected),
        "messages": load.sent,
        "unacked": sum(len(m.pending) for m in members),
        "clients_on_victim": len(on_victim),
        "clients_resumed": len(resumed),
        "resume": summary_ms(resumed),
        "close_codes": dict(sum((m.closes for m in members), Counter())),
        "errors": dict(sum((m.errors for m in members), Counter())),
        "out_of_order": sum(m.out_of_order for m in members),
        "gaps": sum(m.gaps for m in members),
        "conflicting_acks": sum(m.conflicting_acks for m in members),
        "drain_s": round(exited_at - event_at, 2),
        # the generator's own state during the load: a late timer delays every ack it stamps
        "generator_core_share": round(generator_share, 2),
        "generator_loop_lag_p99_ms": lag_p99,
        "generator_loop_lag_max_ms": None if lag_max is None else round(lag_max, 1),
        **check,
    }
    if phase.startswith("failover"):
        budget = ttl_ms / 1000 + 1
        pauses = [first_ack_after(by_room[room], event_at) for room in affected]
        others = [first_ack_after(by_room[r], event_at) for r in rooms if r not in affected]
        stalls = [longest_stall(stayed[room], event_at, load_end) for room in affected]
        record.update(
            budget_ms=round(budget * 1000),
            pause=summary_ms(pauses),
            pause_unaffected=summary_ms(others),
            stall=summary_ms(stalls),
            met=bool(pauses)
            and all(p is not None and p <= budget for p in pauses)
            and check["lost"] == 0
            and check["duplicates"] == 0,
        )
    else:
        start, end = event_at - DRAIN_WINDOW_BEFORE_S, exited_at + DRAIN_WINDOW_AFTER_S
        # pause: what a sender that stayed connected saw (the hand-off of the room itself);
        # pause_all: every sender, those closed with 1012 included (their reconnection too)
        stalls = [longest_stall(stayed[room], start, end) for room in affected]
        others = [longest_stall(stayed[r], start, end) for r in rooms if r not in affected]
        summary = summary_ms(stalls)
        record.update(
            goal_p99_ms=DRAIN_GOAL_P99_MS,
            pause=summary,
            pause_unaffected=summary_ms(others),
            pause_all=summary_ms([longest_stall(by_room[r], start, end) for r in affected]),
            pause_all_unaffected=summary_ms(
                [longest_stall(by_room[r], start, end) for r in rooms if r not in affected]
            ),
            met=summary["p99_ms"] is not None
            and summary["p99_ms"] < DRAIN_GOAL_P99_MS
            and check["lost"] == 0
            and check["duplicates"] == 0,
        )
    # the harness goes on with a full cluster: a fresh node takes the victim's slot
    await asyncio.to_thread(system.replace_node, victim)
    view.live.append(victim)
    view.live.sort()
    await asyncio.sleep(2.0)  # the newcomer takes the rooms that prefer it before the next phase
    return record


def _complete(members: list[Member]) -> bool:
    if any(m.pending for m in members):
        return False
    acked: dict[str, int] = Counter()
    for member in members:
        acked[member.room] += sum(1 for c in member.commands if c.acked_at is not None)
    return all(m.connected and len(m.counts) >= acked[m.room] for m in members if m.live)


# -- the peers


class PeerMember(Client):
    """A peer's client (bench.clients.Client) that notes when it first received a message."""

    first_receipt = 0.0

    def _on_text(self, text: str) -> bool:
        tally = self.tally
        before = tally.unique if tally is not None else 0
        answer = super()._on_text(text)
        if tally is not None and tally.unique > before and not self.first_receipt:
            self.first_receipt = time.monotonic()
        return answer


async def _peer(
    system: System, rooms: list[str], rate: int, plan: PausePlan, base: dict[str, Any]
) -> dict[str, Any]:
    """SIGKILL server 0 under the load; its clients reconnect to server 1 and join again."""
    tally = Tally(step=900_001)
    members = [
        PeerMember(
            index=2_000_000 + r * 100 + m,
            node=m % 2,
            room=room,
            url=system.ws_url(m % 2, room, f"q{r}-{m}"),
            origin=system.origin(m % 2),
            protocol=system.protocol,
        )
        for r, room in enumerate(rooms)
        for m in range(50)
    ]
    gate = asyncio.Semaphore(50)

    async def join(member: PeerMember) -> None:
        async with gate:
            with contextlib.suppress(Exception):
                await member.open(tally, 30.0)

    await asyncio.gather(*(join(m) for m in members))
    joined = [m for m in members if m.ws is not None]
    for member in joined:
        member.seen_step = tally.step  # receipts are counted per user, in this set
    # two senders per room, one on each server; a moved sender sends again once it is back
    senders = [s.index for room in rooms for s in [m for m in joined if m.room == room][:2]]
    current: dict[int, PeerMember] = {m.index: m for m in joined}
    moved = [m for m in joined if m.node == 0]
    per_room: Counter[str] = Counter()
    sent = send_failed = 0
    reconnected: list[PeerMember] = []
    reconnect: asyncio.Task[None] | None = None
    killed_at = 0.0
    try:
        await asyncio.sleep(1.0)
        loop = asyncio.get_running_loop()
        begin = loop.time()
        stop_at = begin + plan.before_s + 4.0 + plan.after_extra_s
        while loop.time() < stop_at:
            if not killed_at and loop.time() >= begin + plan.before_s:
                await asyncio.to_thread(system.kill_node, 0)
                killed_at = time.monotonic()
                reconnect = loop.create_task(
                    _peer_reconnect(system, moved, tally, reconnected, current)
                )
            due = int((loop.time() - begin) * message_rate(rate)) + 1
            while sent < due:
                sender = current[senders[sent % len(senders)]]
                now = time.monotonic_ns()
                try:
                    await sender.send_message(make_body(tally.step, sender.index, sent, now), "")
                    per_room[sender.room] += 1
                except Exception:
                    send_failed += 1  # its server is gone and the user sees it: not counted
                sent += 1
            await asyncio.sleep(max(0.0, begin + sent / message_rate(rate) - loop.time()))
        if reconnect is not None:
            await asyncio.wait_for(reconnect, 30)
        await asyncio.sleep(plan.after_extra_s)  # the last deliveries arrive
    finally:
        if reconnect is not None and not reconnect.done():
            reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reconnect
        await asyncio.gather(*(m.close() for m in members + reconnected))
    back_ids = {m.index for m in reconnected}
    at_end = [m for m in joined if m.node == 1 or m.index in back_ids]
    expected = sum(per_room[m.room] for m in at_end)
    delivered = sum(len(m.seen) for m in at_end)
    again = [m.first_receipt - killed_at for m in reconnected if m.first_receipt > killed_at]
    return {
        **base,
        "kind": "pause",
        "phase": "kill",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg": load_average(),
        "sockets": len(members),
        "connected": len(joined),
        "nodes": 2,
        "messages": sent,
        "send_failed": send_failed,
        "clients_on_victim": len(moved),
        "clients_resumed": len(reconnected),
        "receive_again": summary_ms(again + [None] * (len(moved) - len(again))),
        "expected": expected,
        "delivered": delivered,
        "lost": expected - delivered,
        "loss_share": round((expected - delivered) / expected, 4) if expected else None,
        "duplicates": tally.duplicates,
    }


def message_rate(rate: int) -> float:
    return rate / 50  # deliveries/s over rooms of 50


async def _peer_reconnect(
    system: System,
    moved: list[PeerMember],
    tally: Tally,
    out: list[PeerMember],
    current: dict[int, PeerMember],
) -> None:
    """The killed server's clients, each as a new socket on server 1 in the same room; the new
    socket shares its user's receipts (a message received twice is a duplicate)."""
    gate = asyncio.Semaphore(50)

    async def one(old: PeerMember) -> None:
        fresh = PeerMember(
            index=old.index, node=1, room=old.room,
            url=system.ws_url(1, old.room, f"r{old.index}"),
            origin=system.origin(1), protocol=system.protocol,
        )  # fmt: skip
        fresh.seen, fresh.seen_step = old.seen, old.seen_step
        # the same first delay as the project's clients (the Channels tutorial has no
        # reconnect at all; Socket.IO's client would wait 0.5-1.5 s)
        await asyncio.sleep(random.uniform(RETRY_MIN_S, RETRY_MAX_S))
        async with gate:
            with contextlib.suppress(Exception):
                await fresh.open(tally, 20.0)
                out.append(fresh)
                current[old.index] = fresh

    await asyncio.gather(*(one(m) for m in moved))


def summary(record: dict[str, Any]) -> str:
    """One line for the console."""
    pause = record.get("pause") or record.get("receive_again") or {}
    return (
        f"  {record['system']:<16} pauses {record.get('phase')}: {record.get('affected_rooms')} "
        f"rooms moved, pause median {pause.get('median_ms')} / p99 {pause.get('p99_ms')} / max "
        f"{pause.get('max_ms')} ms, lost {record.get('lost')}, dup {record.get('duplicates')}, "
        f"resumed {record.get('clients_resumed')}/{record.get('clients_on_victim')}, "
        f"met {record.get('met')}, load {(record.get('loadavg') or ['?'])[0]}"
        + (f", error {record['error']}" if record.get("error") else "")
    )
