"""Issue 8 item 4: does a well-behaved client keep its latency while a fuzzer sends garbage?

    .venv/bin/python benchmarks/fuzz_p99.py [--baseline-s 20] [--fuzz-s 20] [--fuzz-rate 200]
        [--fuzzers 4] [--interval-ms 10] [--old-ids] [--seed 1] [--out PATH]

One embedded Redis, one ``runnode`` (``CHAT_RATE_LIMIT=100000/1``: the fuzzer is answered, not
just rate-limited), one room. A probe client sends sequentially (send, wait for its ack, sleep
``--interval-ms``) and records each send->ack latency: alone for ``--baseline-s``, then for
``--fuzz-s`` while ``--fuzzers`` other sockets in the same room, as another user, send bad
frames at ``--fuzz-rate`` frames per second in total (invalid JSON, binary frames, wrong types,
Unicode look-alike ids, ids of the probe's messages, oversized bodies and frames, deep nesting,
lone surrogates, 5,000-digit numbers). Every fuzz frame must be answered with an ``error``;
an ``ack`` to one would be a stored bad frame. ``--old-ids`` also aims edits at the probe's
oldest messages (outside the room's 200-message window, read from the log: issue 8 hole 10).

Prints p50/p99/max of both phases and the p99 ratio, and writes them to
``benchmarks/results/fuzz_p99.json``. Bounded in time; every process it starts is ended.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
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

import websockets  # noqa: E402

from cluster.embedded import EmbeddedRedis  # noqa: E402
from tests.support.nodes import Cluster, Node  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ROOM = "bench"
ANSWER_TIMEOUT_S = 10.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(latencies_ms: list[float]) -> dict[str, Any]:
    if not latencies_ms:
        return {"count": 0}
    return {
        "count": len(latencies_ms),
        "p50_ms": round(pct(latencies_ms, 0.50), 2),
        "p90_ms": round(pct(latencies_ms, 0.90), 2),
        "p99_ms": round(pct(latencies_ms, 0.99), 2),
        "max_ms": round(max(latencies_ms), 2),
        "mean_ms": round(statistics.fmean(latencies_ms), 2),
    }


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process used so far: a figure load on the box does not
    skew the way it skews latency."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


# -- the probe ------------------------------------------------------------------------------------


@dataclass
class Probe:
    """One socket that sends, waits for its ack, and sleeps: its latencies, per phase."""

    node: Node
    interval_s: float
    ids: list[str] = field(default_factory=list)  # its acked message ids
    errors: list[dict[str, Any]] = field(default_factory=list)

    async def run(self, seconds: float) -> list[float]:
        latencies: list[float] = []
        uri = f"{self.node.ws}/ws/rooms/{ROOM}/?name=probe"
        async with websockets.connect(uri, max_size=None) as ws:
            await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_S)  # hello
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                client_id = uuid.uuid4().hex
                started = time.perf_counter()
                await ws.send(json.dumps({"type": "send", "body": "probe", "client_id": client_id}))
                answer = await asyncio.wait_for(self._answer(ws, client_id), ANSWER_TIMEOUT_S)
                if answer["type"] == "ack":
                    latencies.append((time.perf_counter() - started) * 1000)
                    self.ids.append(answer["id"])
                else:
                    self.errors.append(answer)
                await asyncio.sleep(self.interval_s)
        return latencies

    @staticmethod
    async def _answer(ws: Any, client_id: str) -> dict[str, Any]:
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("type") in ("ack", "error") and frame.get("client_id") == client_id:
                return frame


# -- the fuzzer -----------------------------------------------------------------------------------

LOOKALIKE_IDS = ["m²", "m١٢", "ｍ１", "m１２", "m𝟙", "m01", "m0", "m-1", "M1", "m1 ", "m1\x00",
                 "m99999999999999999999", "m" + "5" * 5000, "m999999999999999999"]  # fmt: skip


class Garbage:
    """Bad frames, drawn from a seeded mix; ids of the probe's messages are those the fuzzing
    sockets saw go by (they are in the room too)."""

    KINDS = {
        "not_json": 3, "binary": 2, "not_object": 1, "unknown_type": 2, "wrong_types": 2,
        "lookalike_id": 4, "others_recent_id": 4, "body_too_long": 2, "frame_too_long": 1,
        "deep_nesting": 1, "lone_surrogate": 2, "huge_number": 1, "blank_body": 2,
    }  # fmt: skip

    def __init__(self, seed: int, old_ids: bool, only: str = "") -> None:
        self.random = random.Random(seed)
        self.ids: list[str] = []  # the probe's message ids, as the fuzzers' sockets see them
        kinds = dict(self.KINDS)
        if old_ids:
            kinds["others_old_id"] = 4
        if only:
            kinds = {k: w for k, w in kinds.items() if k in only.split(",")}
        self.names = list(kinds)
        self.weights = list(kinds.values())

    def draw(self) -> tuple[str, str | bytes]:
        r = self.random
        kind = r.choices(self.names, self.weights)[0]
        client_id = f"fz-{r.getrandbits(40):x}"
        if kind == "not_json":
            return kind, r.choice(["{", "not json", '{"type": "send",', "\x00", "[1,]", "}{"])
        if kind == "binary":
            return kind, r.randbytes(r.randint(1, 64))
        if kind == "not_object":
            return kind, r.choice(["[]", "1", '"send"', "null", "true", "[{}]"])
        if kind == "unknown_type":
            return kind, json.dumps({"type": r.choice(["SEND", "ack", 1, None, [], "typing "])})
        if kind == "wrong_types":
            field_name, value = r.choice([("body", 1), ("body", None), ("client_id", 5),
                                          ("client_id", ""), ("id", [])])  # fmt: skip
            frame = {"type": "edit", "id": "m1", "body": "x", "client_id": client_id}
            return kind, json.dumps({**frame, field_name: value})
        if kind == "lookalike_id":
            message_id = r.choice(LOOKALIKE_IDS)
            return kind, json.dumps({"type": "delete", "id": message_id, "client_id": client_id})
        if kind in ("others_recent_id", "others_old_id"):
            ids = self.ids
            if not ids:
                return kind, json.dumps({"type": "delete", "id": "m1", "client_id": client_id})
            pool = ids[-100:] if kind == "others_recent_id" else ids[: max(1, len(ids) - 400)]
            frame = {"type": "edit", "id": r.choice(pool), "body": "mine", "client_id": client_id}
            return kind, json.dumps(frame)
        if kind == "body_too_long":
            body = "x" * r.randint(4001, 12000)
            return kind, json.dumps({"type": "send", "body": body, "client_id": client_id})
        if kind == "frame_too_long":
            return kind, json.dumps({"type": "send", "body": "y" * 20_000})
        if kind == "deep_nesting":
            depth = r.randint(1000, 7900)
            return kind, "[" * depth + "]" * depth
        if kind == "lone_surrogate":
            return kind, '{"type":"send","body":"\\ud800","client_id":"' + client_id + '"}'
        if kind == "huge_number":
            return kind, '{"type":"send","body":' + "9" * 5000 + "}"
        assert kind == "blank_body"
        return kind, json.dumps({"type": "send", "body": " \n ", "client_id": client_id})


@dataclass
class FuzzStats:
    sent: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    acks: int = 0  # acks to bad frames: each one a stored bad frame
    closed: int = 0


async def fuzzer(
    node: Node, garbage: Garbage, rate: float, seconds: float, stats: FuzzStats, index: int
) -> None:
    uri = f"{node.ws}/ws/rooms/{ROOM}/?name=fuzzer{index}"
    sent = answered = 0
    all_answered = asyncio.Event()
    async with websockets.connect(uri, max_size=None) as ws:

        async def read() -> None:
            nonlocal answered
            with contextlib.suppress(websockets.ConnectionClosed):
                async for raw in ws:
                    frame = json.loads(raw)
                    if frame.get("type") == "error":
                        stats.codes[frame["code"]] += 1
                    elif frame.get("type") == "ack":
                        stats.acks += 1
                    else:
                        if frame.get("type") == "message" and index == 0:
                            garbage.ids.append(frame["id"])
                        continue  # the probe's messages, presence
                    answered += 1
                    if done_sending and answered >= sent:
                        all_answered.set()

        done_sending = False
        reader = asyncio.create_task(read())
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for n in range(int(rate * seconds)):
                # a fixed schedule, not "sleep after each": the rate holds however slow sends are
                await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
                kind, frame = garbage.draw()
                stats.sent[kind] += 1
                try:
                    await ws.send(frame)
                except websockets.ConnectionClosed:
                    stats.closed += 1
                    return
                sent += 1
            done_sending = True
            if answered >= sent:
                all_answered.set()
            with contextlib.suppress(TimeoutError):  # unanswered ones are counted, not awaited
                await asyncio.wait_for(all_answered.wait(), ANSWER_TIMEOUT_S)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


# -- the fuzzing process: its own interpreter, so it does not slow the probe's event loop -------


async def fuzz_worker(args: argparse.Namespace) -> dict[str, Any]:
    node = Node("a", {}, port=args.port)
    stats = FuzzStats()
    garbage = Garbage(args.seed, args.old_ids, args.kinds)
    per_socket = args.fuzz_rate / args.fuzzers
    await asyncio.gather(
        *(fuzzer(node, garbage, per_socket, args.fuzz_s, stats, i) for i in range(args.fuzzers))
    )
    return {"sent": dict(stats.sent), "codes": dict(stats.codes), "acks": stats.acks,
            "closed": stats.closed}  # fmt: skip


async def start_fuzzing(args: argparse.Namespace, node: Node) -> asyncio.subprocess.Process:
    worker_args = [
        "--worker", "--port", str(node.port), "--fuzz-s", str(args.fuzz_s),
        "--fuzz-rate", str(args.fuzz_rate), "--fuzzers", str(args.fuzzers),
        "--seed", str(args.seed), "--kinds", args.kinds,
        *(["--old-ids"] if args.old_ids else []),
    ]  # fmt: skip
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, *worker_args, stdout=asyncio.subprocess.PIPE
    )


# -- the run --------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    server = EmbeddedRedis.start(appendonly=False)
    data = Path(tempfile.mkdtemp(prefix="bench-fuzz-"))
    env = {"CHAT_RATE_LIMIT": "100000/1", "CHAT_RATE_LIMIT_PER_ADDRESS": "100000/1"}
    cluster = Cluster(server.url, data, **env)
    worker: asyncio.subprocess.Process | None = None
    try:
        cluster.create_room(ROOM)
        node = cluster.add("a")
        probe = Probe(node, args.interval_ms / 1000)
        await probe.run(2.0)  # warm-up: the room is active
        rss_before = rss_mib(node.pid)
        cpu_start = cpu_s(node.pid)
        baseline = await probe.run(args.baseline_s)
        cpu_baseline = cpu_s(node.pid) - cpu_start
        errors_before = len(probe.errors)
        worker = await start_fuzzing(args, node)
        cpu_start = cpu_s(node.pid)
        under_fuzz = await probe.run(args.fuzz_s)
        cpu_fuzz = cpu_s(node.pid) - cpu_start
        out, _ = await asyncio.wait_for(worker.communicate(), args.fuzz_s + 30)
        fuzzed = json.loads(out)
        status, health = node.get("/healthz")
        _, page = node.get(f"/api/rooms/{ROOM}/events?after=0&limit=1")
        sent = sum(fuzzed["sent"].values())
        answered = sum(fuzzed["codes"].values()) + fuzzed["acks"]
        base, fuzz = summary(baseline), summary(under_fuzz)
        return {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cores": os.cpu_count(),
            "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "port")},
            "baseline": base,
            "under_fuzz": fuzz,
            "p50_ratio": round(fuzz["p50_ms"] / base["p50_ms"], 2),
            "p99_ratio": round(fuzz["p99_ms"] / base["p99_ms"], 2),
            "fuzz": {
                "frames_sent": sent,
                "frames_per_s": round(sent / args.fuzz_s, 1),
                "answered": answered,
                "unanswered": sent - answered,
                "acks_to_bad_frames": fuzzed["acks"],
                "sockets_closed": fuzzed["closed"],
                "by_kind": dict(sorted(fuzzed["sent"].items())),
                "error_codes": dict(sorted(fuzzed["codes"].items())),
            },
            "probe_errors": {
                "baseline": errors_before,
                "under_fuzz": len(probe.errors) - errors_before,
                "first": probe.errors[:3],
            },
            # every seq is a probe's message: nothing a fuzzer sent was stored
            "stored": {"last_seq": page["last_seq"], "probe_acks": len(probe.ids)},
            "node": {
                "healthz": status,
                "alive": node.process is not None and node.process.poll() is None,
                "rss_mib_before": rss_before,
                "rss_mib_after": rss_mib(node.pid),
                "cpu_share_baseline": round(cpu_baseline / args.baseline_s, 3),
                "cpu_share_under_fuzz": round(cpu_fuzz / args.fuzz_s, 3),
            },
            "load_average": os.getloadavg(),
            "healthy": health.get("status") == "ok",
        }
    finally:
        if worker is not None and worker.returncode is None:
            worker.kill()
            await worker.wait()
        cluster.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--baseline-s", type=float, default=20.0)
    parser.add_argument("--fuzz-s", type=float, default=20.0)
    parser.add_argument("--fuzz-rate", type=float, default=200.0, help="bad frames/s, in total")
    parser.add_argument("--fuzzers", type=int, default=4, help="fuzzing sockets")
    parser.add_argument("--interval-ms", type=int, default=10, help="probe sleep between sends")
    parser.add_argument("--old-ids", action="store_true", help="edits of the oldest messages too")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kinds", default="", help="only these kinds of bad frame (a,b,...)")
    parser.add_argument("--max-minutes", type=float, default=5.0)
    parser.add_argument("--out", default=str(RESULTS / "fuzz_p99.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(fuzz_worker(args))))
        return
    budget = args.max_minutes * 60
    results = asyncio.run(asyncio.wait_for(bench(args), budget))
    print(json.dumps(results, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
