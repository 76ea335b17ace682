"""Issue 4 figures: the pause a drain (SIGTERM) causes in each room, and what it loses.

    .venv/bin/python benchmarks/handoff_bench.py [--rooms 100] [--drains 20] [--interval-ms 50]

Three ``runnode`` processes on loopback share their own embedded Redis. Every room has one probe
client that sends sequentially (send, wait for the ack, sleep ``--interval-ms``, repeat); the
probes start spread over the nodes. Then, ``--drains`` times: SIGTERM the node owning the most
rooms, wait for it to exit, start a replacement under a fresh name. A probe whose node drains
gets close code 1012 and resumes on another ready node (picked at random, as a load balancer
would) with ``after=`` its last seq, re-sending its unacked command with the same client_id
(what ``tests.support.client.RoamingClient`` does; the probe here is a lean copy that keeps no
frames, so 100 of them stay cheap for minutes).

The pause of a room in one drain is the longest send-to-ack time of its probe's commands in flight
during the drain window (SIGTERM - 0.2 s .. exit + 1 s): with a sequential probe, that is the
longest gap between two consecutive acks minus the probe's own sleep. Rebalancing pauses (the
replacement joining and taking the rooms that prefer it) are reported apart. Lost: acked but not
in the room's log; duplicated: a client_id in the log more than once.

Prints the figures and writes them to benchmarks/results/handoff.json. Every loop is bounded in
count and in time (``--max-minutes``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

import websockets  # noqa: E402

from cluster.embedded import EmbeddedRedis  # noqa: E402
from tests.scenarios.load import all_events  # noqa: E402
from tests.support.nodes import Cluster, Node, http_get, manage  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DRAIN_WINDOW_BEFORE_S = 0.2
DRAIN_WINDOW_AFTER_S = 1.0
REBALANCE_WINDOW_AFTER_S = 2.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_ms(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values) * 1000, 1),
        "p99_ms": round(pct(values, 0.99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


@dataclass
class Sent:
    client_id: str
    sent_at: float
    acked_at: float = 0.0
    seq: int = 0
    node: str = ""  # the node whose socket delivered the ack


@dataclass
class Probe:
    """One room's sequential sender: one command in flight, resume and re-send on close."""

    bases: list[str]  # the nodes taking traffic, shared by every probe (a load balancer's view)
    room: str
    name: str
    base: str = ""  # where the current (or last) socket goes
    last_seq: int = 0
    node: str = ""
    sent: list[Sent] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    close_codes: Counter[int] = field(default_factory=Counter)
    closes: list[tuple[float, str, int]] = field(default_factory=list)  # (when, node, code)
    resumes: list[tuple[float, str]] = field(default_factory=list)  # (hello at, node)
    duplicates_seen: int = 0
    holes_seen: int = 0
    failures: int = 0
    _ws: Any = None
    _reader: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pending(self) -> Sent | None:
        return self.sent[-1] if self.sent and not self.sent[-1].acked_at else None

    @property
    def connected(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def connect(self, first: str = "", timeout: float = 20.0) -> None:
        """Connect to ``first``, else to a node picked at random other than the last one."""
        deadline = time.monotonic() + timeout
        query = f"name={self.name}" + (f"&after={self.last_seq}" if self.sent else "")
        while True:
            others = [b for b in self.bases if b != self.base] or self.bases
            base, first = first or random.choice(others), ""
            try:
                ws = await asyncio.wait_for(
                    websockets.connect(f"{base}/ws/rooms/{self.room}/?{query}"), 5
                )
                try:
                    hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
                except BaseException:
                    await ws.close()
                    raise
                break
            except (TimeoutError, OSError, websockets.WebSocketException):
                self.base = base
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.01)
        self.base = base
        self.node = hello["node"]
        self.resumes.append((time.monotonic(), self.node))
        if not self.sent:
            self.last_seq = int(hello["last_seq"])
        self._ws = ws
        self._reader = asyncio.get_running_loop().create_task(self._read(ws, self.node))
        pending = self.pending
        if pending is not None:  # re-send, same client_id
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._send(pending)

    async def _read(self, ws: Any, node: str) -> None:
        try:
            async for raw in ws:
                self._on_frame(json.loads(raw), node)
        except websockets.ConnectionClosed:
            pass
        finally:
            code = ws.close_code or 0
            self.close_codes[code] += 1
            self.closes.append((time.monotonic(), node, code))
            self._changed.set()

    def _on_frame(self, frame: dict[str, Any], node: str) -> None:
        kind = frame.get("type")
        if kind == "ack":
            pending = self.pending
            if pending is not None and frame.get("client_id") == pending.client_id:
                pending.acked_at = time.monotonic()
                pending.seq = int(frame["seq"])
                pending.node = node
                self._changed.set()
        elif kind in ("message", "edit", "delete"):
            seq = int(frame["seq"])
            if seq <= self.last_seq:
                self.duplicates_seen += 1
            elif seq > self.last_seq + 1:
                self.holes_seen += 1
            self.last_seq = max(self.last_seq, seq)
        elif kind == "error":
            self.errors[str(frame.get("code"))] += 1

    async def _send(self, sent: Sent) -> None:
        frame = {
            "type": "send",
            "body": f"{self.name} {len(self.sent)}",
            "client_id": sent.client_id,
        }
        await self._ws.send(json.dumps(frame))

    async def send_and_wait(self, timeout: float = 20.0) -> Sent:
        sent = Sent(uuid.uuid4().hex, time.monotonic())
        self.sent.append(sent)
        deadline = sent.sent_at + timeout
        if self.connected:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._send(sent)
        while not sent.acked_at:
            if time.monotonic() > deadline:
                self.failures += 1
                raise TimeoutError(f"{self.name}: no ack in {timeout}s")
            if not self.connected:
                await self.connect()  # another node; re-sends the pending command
                continue
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), 1.0)
            except TimeoutError:
                # No answer (an ``unavailable`` error, a request lost): retry, same client_id.
                with contextlib.suppress(websockets.ConnectionClosed):
                    await self._send(sent)
        return sent

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reader, 5)


async def run_probe(probe: Probe, stop: asyncio.Event, interval: float) -> None:
    while not stop.is_set():
        try:
            await probe.send_and_wait()
        except (TimeoutError, OSError, websockets.WebSocketException):
            await asyncio.sleep(0.1)  # counted in probe.failures (or retried by the next send)
            continue
        await asyncio.sleep(interval)


def pause_in(probe: Probe, start: float, end: float) -> tuple[float, float] | None:
    """(longest send-to-ack, longest ack-to-ack gap) among commands in flight in [start, end]."""
    longest, gap = 0.0, 0.0
    previous_ack = None
    found = False
    for sent in probe.sent:
        acked = sent.acked_at or end  # never acked: counts as in flight until the end
        if sent.sent_at <= end and acked >= start:
            found = True
            longest = max(longest, acked - sent.sent_at)
            if previous_ack is not None:
                gap = max(gap, acked - previous_ack)
        if sent.acked_at:
            previous_ack = sent.acked_at
    return (longest, gap) if found else None


def room_owners(nodes: list[Node]) -> dict[str, str]:
    """Room -> owner from /api/cluster/ of the first node that answers (nodes may be busy)."""
    for _ in range(3):
        for node in nodes:
            try:
                status, view = http_get(f"{node.http}/api/cluster/", timeout=10)
            except OSError:
                continue
            if status == 200:
                return {r["slug"]: r["owner"] for r in view["rooms"]}
    return {}


def drain_seconds_in_log(node: Node) -> float | None:
    found = re.findall(r"drain finished in ([0-9.]+)s", node.log())
    return float(found[-1]) if found else None


async def wait_ready_rooms(nodes: list[Node], want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(await asyncio.to_thread(room_owners, nodes)) >= want:
            return
        await asyncio.sleep(0.2)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    server = EmbeddedRedis.start(appendonly=False)
    data = Path(tempfile.mkdtemp(prefix="bench-handoff-"))
    env = {"CHAT_LEASE_TTL_MS": str(args.ttl_ms), "CHAT_RATE_LIMIT": "100000/1"}
    cluster: Cluster | None = None
    try:
        cluster = Cluster(server.url, data, **env)
        return await measure(args, cluster)
    finally:
        if cluster is not None:
            cluster.close()  # every node it started, by pid
        server.stop()


async def measure(args: argparse.Namespace, cluster: Cluster) -> dict[str, Any]:
    started = time.monotonic()
    budget = args.max_minutes * 60
    live: list[Node] = []
    rooms = [f"r{i:03d}" for i in range(args.rooms)]
    probes: list[Probe] = []
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    drains: list[dict[str, Any]] = []
    try:
        code = "from rooms.services import room_create\n" + "".join(
            f"room_create(slug={slug!r})\n" for slug in rooms
        )
        manage("shell", "-c", code, env=cluster.env, timeout=120)
        live = [cluster.add(f"n{i}") for i in range(3)]
        generation = 3
        bases = [n.ws for n in live]  # shared: drained nodes leave it, replacements join it
        probes = [Probe(bases, slug, f"probe{i}") for i, slug in enumerate(rooms)]
        sem = asyncio.Semaphore(20)

        async def connect(i: int, probe: Probe) -> None:
            async with sem:
                await probe.connect(first=bases[i % 3])

        await asyncio.gather(*(connect(i, p) for i, p in enumerate(probes)))
        interval = args.interval_ms / 1000
        tasks = [asyncio.create_task(run_probe(p, stop, interval)) for p in probes]
        await wait_ready_rooms(live, len(rooms), 30)
        # Steady state: what a command costs under this load with no drain at all.
        base_start = time.monotonic()
        await asyncio.sleep(args.baseline_s)
        baseline = [
            s.acked_at - s.sent_at
            for p in probes
            for s in p.sent
            if s.acked_at and s.sent_at >= base_start
        ]
        print(f"baseline send-to-ack under load: {summary_ms(baseline)}", flush=True)

        for d in range(args.drains):
            if time.monotonic() - started > budget - 30:
                print(f"time budget reached after {d} drains", flush=True)
                break
            owners = await asyncio.to_thread(room_owners, live)
            counts = Counter(owners.values())
            victim = max(live, key=lambda n: counts.get(n.name, 0))
            moved = {slug for slug, owner in owners.items() if owner == victim.name}
            on_victim = {p.room for p in probes if p.node == victim.name and p.connected}
            t_term = time.monotonic()
            bases.remove(victim.ws)  # /readyz turns 503: the load balancer stops sending there
            victim.signal(signal.SIGTERM)
            assert victim.process is not None
            try:
                exit_code = await asyncio.to_thread(victim.process.wait, 30)
            except Exception:
                exit_code = None
            t_exit = time.monotonic()
            live.remove(victim)
            await asyncio.sleep(DRAIN_WINDOW_AFTER_S)
            w0, w1 = t_term - DRAIN_WINDOW_BEFORE_S, t_exit + DRAIN_WINDOW_AFTER_S
            rows = []
            for p in probes:
                found = pause_in(p, w0, w1)
                if found is None:
                    continue
                closed = [c for c in p.closes if w0 <= c[0] <= w1 and c[1] == victim.name]
                resumed = [r for r in p.resumes if closed and r[0] >= closed[0][0]]
                rows.append(
                    {
                        "room": p.room,
                        "moved": p.room in moved,
                        "probe_on_drained_node": p.room in on_victim,
                        "pause_s": found[0],
                        "gap_s": found[1],
                        "close_after_s": closed[0][0] - t_term if closed else None,
                        "resume_s": resumed[0][0] - closed[0][0] if resumed else None,
                    }
                )
            # The replacement joins; rooms preferring it move to it by hand-off (rebalance).
            fresh_name = f"n{generation}"
            generation += 1
            t_add = time.monotonic()
            fresh = await asyncio.to_thread(cluster.add, fresh_name)
            t_ready = time.monotonic()
            live.append(fresh)
            bases.append(fresh.ws)
            await asyncio.sleep(REBALANCE_WINDOW_AFTER_S)
            rebalance = [
                found[0]
                for p in probes
                if (found := pause_in(p, t_ready - 0.5, t_ready + REBALANCE_WINDOW_AFTER_S))
            ]
            owners_after = await asyncio.to_thread(room_owners, live)
            affected = [r for r in rows if r["moved"] or r["probe_on_drained_node"]]
            drain = {
                "drain": d + 1,
                "node": victim.name,
                "rooms_owned": len(moved),
                "probes_on_node": len(on_victim),
                "exit_code": exit_code,
                "sigterm_to_exit_s": round(t_exit - t_term, 3),
                "drain_in_log_s": drain_seconds_in_log(victim),
                "replacement_start_s": round(t_ready - t_add, 3),
                "rooms_to_replacement": sum(1 for o in owners_after.values() if o == fresh_name),
                "affected": summary_ms([r["pause_s"] for r in affected]),
                "moved_only": summary_ms(
                    [r["pause_s"] for r in rows if r["moved"] and not r["probe_on_drained_node"]]
                ),
                "probe_resumed": summary_ms(
                    [r["pause_s"] for r in rows if r["probe_on_drained_node"]]
                ),
                "close_1012_after_sigterm": summary_ms(
                    [r["close_after_s"] for r in rows if r["close_after_s"] is not None]
                ),
                "reconnect": summary_ms([r["resume_s"] for r in rows if r["resume_s"] is not None]),
                "unaffected": summary_ms(
                    [r["pause_s"] for r in rows if not (r["moved"] or r["probe_on_drained_node"])]
                ),
                "rebalance": summary_ms(rebalance),
                "_rows": rows,
                "_rebalance": rebalance,
            }
            drains.append(drain)
            print(
                f"drain {d + 1}: {victim.name} owned {len(moved)} rooms, "
                f"{len(on_victim)} probes on it; exit {exit_code} after "
                f"{t_exit - t_term:.3f}s (drain {drain['drain_in_log_s']}s); affected pause "
                f"{drain['affected']}; rebalance {drain['rebalance']}",
                flush=True,
            )
            await asyncio.sleep(args.settle_s)
    finally:
        stop.set()
        if tasks:
            await asyncio.wait(tasks, timeout=30)
    # Lost and duplicated, against the log.
    lost = duplicated = unacked = 0
    checker = live[0]
    for p in probes:
        events = all_events(checker, p.room)
        in_log = Counter(e.get("client_id") for e in events if e["type"] == "message")
        for s in p.sent:
            if s.acked_at and in_log[s.client_id] == 0:
                lost += 1
            elif not s.acked_at:
                unacked += 1
        duplicated += sum(1 for c, n in in_log.items() if c and n > 1)
    for p in probes:
        await p.close()

    def collect(moved: bool | None, on_node: bool | None) -> list[float]:
        """Pauses of the rows matching (None: either)."""
        return [
            r["pause_s"]
            for d in drains
            for r in d["_rows"]
            if (moved is None or r["moved"] == moved)
            and (on_node is None or r["probe_on_drained_node"] == on_node)
        ]

    rebalance_all = [x for d in drains for x in d["_rebalance"]]
    every_room = collect(None, None)
    affected_all = [
        r["pause_s"] for d in drains for r in d["_rows"] if r["moved"] or r["probe_on_drained_node"]
    ]
    moved_only, resumed, unaffected = (
        collect(True, False),
        collect(None, True),
        collect(False, False),
    )
    for d in drains:
        del d["_rows"], d["_rebalance"]
    return {
        "machine": f"{os.cpu_count()} cores",
        "when": time.strftime("%F %T"),
        "rooms": args.rooms,
        "nodes": 3,
        "probe_interval_ms": args.interval_ms,
        "lease_ttl_ms": args.ttl_ms,
        "drains_done": len(drains),
        "commands_acked": sum(1 for p in probes for s in p.sent if s.acked_at),
        "baseline_send_to_ack": summary_ms(baseline),
        # The headline: rooms the drain touched (moved, or their probe had to resume).
        "pause_affected_rooms": summary_ms(affected_all),
        "pause_moved_rooms_probe_elsewhere": summary_ms(moved_only),
        "pause_probe_resumed_after_1012": summary_ms(resumed),
        # Rooms the drain did not touch, same window: the floor this machine sets under load.
        "pause_untouched_rooms": summary_ms(unaffected),
        "pause_all_rooms": summary_ms(every_room),
        "pause_rebalance_all_rooms": summary_ms(rebalance_all),
        "lost": lost,
        "duplicated": duplicated,
        "unacked_at_end": unacked,
        "exit_codes": dict(Counter(str(d["exit_code"]) for d in drains)),
        "error_frames": dict(sum((p.errors for p in probes), Counter())),
        "close_codes": {
            str(k): v for k, v in sum((p.close_codes for p in probes), Counter()).items()
        },
        "probe_timeouts": sum(p.failures for p in probes),
        "client_saw_duplicates": sum(p.duplicates_seen for p in probes),
        "client_saw_holes": sum(p.holes_seen for p in probes),
        "goal": {"median_ms": 50, "p99_ms": 200, "lost": 0, "duplicated": 0},
        "elapsed_s": round(time.monotonic() - started, 1),
        "drains": drains,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--drains", type=int, default=20)
    parser.add_argument("--interval-ms", type=int, default=50, help="probe sleep between sends")
    parser.add_argument("--ttl-ms", type=int, default=1500)
    parser.add_argument("--baseline-s", type=float, default=3.0)
    parser.add_argument("--settle-s", type=float, default=1.0, help="quiet time between drains")
    parser.add_argument("--max-minutes", type=float, default=9.0)
    parser.add_argument("--out", default=str(RESULTS / "handoff.json"))
    args = parser.parse_args()
    results = asyncio.run(bench(args))
    summary = {k: v for k, v in results.items() if k != "drains"}
    print(json.dumps(summary, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
