"""The message archive under load (issue 11): how far it lags the log, and what it costs.

    .venv/bin/python benchmarks/archive_bench.py [--rooms 20] [--rates 40,400] [--seconds 10]
        [--lag-s 5]

Starts its own Redis and two ``runnode`` processes (one SQLite file, as a one-box install)
and, for each rate (messages per second over all rooms; 40/s is S1's highest good rate of
docs/benchmarks.md: 2,000 deliveries/s to rooms of 50), two senders per room, one on each
node, send 64-byte messages at a steady pace for ``--seconds``. Run twice per rate: with the
archive (``CHAT_ARCHIVE_LAG_S=--lag-s``) and with it effectively off (a pass a day).

Figures, printed and written to benchmarks/results/archive.json:

- ``lag_*_s``: for every acked message, from its ack to the first poll (every 50 ms) of the
  database that finds the room archived up to its seq;
- ``node_cpu_us_per_msg``: CPU time of both nodes over the same window (the sending, then
  ``--lag-s`` + 1.5 s) ÷ messages acked, with the archive and without; their difference
  (``archive_cpu_us_per_msg``) is the archive's cost per message on the nodes (the database's
  own work is not in it: SQLite runs inside the nodes, so here it is);
- ``rows_per_transaction``: messages archived ÷ archive transactions (``/metrics``).

Every wait is bounded; every process it started is ended before it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

import websockets  # noqa: E402

from bench.proc import total_cpu  # noqa: E402
from cluster.embedded import EmbeddedRedis  # noqa: E402
from tests.support.nodes import Cluster, Node  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BODY = "x" * 64


class Sender:
    """One socket sending at a steady pace; records when each of its messages was acked."""

    def __init__(self, base: str, room: str, name: str) -> None:
        self.url = f"{base}/ws/rooms/{room}/?name={name}"
        self.room = room
        self.acked: dict[int, float] = {}  # seq -> monotonic time of the ack
        self.ws: Any = None

    async def run(self, count: int, interval_s: float, deadline: float) -> None:
        async with websockets.connect(self.url, max_size=None) as ws:
            reader = asyncio.create_task(self._read(ws))
            try:
                start = time.monotonic()
                for i in range(count):
                    wait = start + i * interval_s - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if time.monotonic() > deadline:
                        break
                    frame = {"type": "send", "body": BODY, "client_id": uuid.uuid4().hex}
                    await ws.send(json.dumps(frame))
                settle = time.monotonic() + 5
                while len(self.acked) < count and time.monotonic() < min(settle, deadline):
                    await asyncio.sleep(0.05)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, ws: Any) -> None:
        async for raw in ws:
            frame = json.loads(raw)
            if frame.get("type") == "ack":
                self.acked[int(frame["seq"])] = time.monotonic()


def cursors(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path, timeout=10) as db:
        rows = db.execute(
            "SELECT r.slug, c.upto FROM rooms_archivecursor c JOIN rooms_room r ON r.id = c.room_id"
        ).fetchall()
    return {slug: int(upto) for slug, upto in rows}


def metric(node: Node, name: str) -> float:
    with urllib.request.urlopen(f"{node.http}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_run(args: argparse.Namespace, rate: float, archive_on: bool) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="archive-bench-"))
    redis_server = EmbeddedRedis.start(data_dir / "redis", appendonly=False)
    lag = str(args.lag_s) if archive_on else "86400"
    cluster = Cluster(
        redis_server.url,
        data_dir,
        CHAT_RATE_LIMIT="100000/1",
        CHAT_ARCHIVE_LAG_S=lag,
        CHAT_LOG_LEVEL="WARNING",
    )
    try:
        rooms = [f"r{i}" for i in range(args.rooms)]
        for slug in rooms:
            cluster.create_room(slug)
        a, b = cluster.add("a"), cluster.add("b")
        senders = [Sender(n.ws, slug, f"s{n.name}") for slug in rooms for n in (a, b)]
        per_sender_rate = rate / len(senders)
        count = max(1, int(per_sender_rate * args.seconds))
        deadline = time.monotonic() + args.seconds + 30
        pids = [n.pid for n in (a, b)]
        cpu_before = total_cpu(pids)
        started = time.monotonic()
        sending = asyncio.gather(*(s.run(count, 1 / per_sender_rate, deadline) for s in senders))
        archived_at: dict[tuple[str, int], float] = {}
        db_path = data_dir / "chat.sqlite3"
        seen_upto: dict[str, int] = {}

        def poll() -> None:
            now = time.monotonic()
            for slug, upto in cursors(db_path).items():
                for seq in range(seen_upto.get(slug, 0) + 1, upto + 1):
                    archived_at[(slug, seq)] = now
                seen_upto[slug] = max(seen_upto.get(slug, 0), upto)

        def behind() -> bool:
            return any(seen_upto.get(s.room, 0) < max(s.acked, default=0) for s in senders)

        # CPU over the same window with and without the archive: the sending, then long
        # enough for the archive to catch up.
        window_end = started + args.seconds + args.lag_s + 1.5
        while time.monotonic() < window_end or not sending.done():
            poll()
            await asyncio.sleep(0.05)
            if time.monotonic() > deadline:
                break
        await sending
        elapsed = time.monotonic() - started
        cpu = total_cpu(pids) - cpu_before
        while archive_on and behind() and time.monotonic() < deadline:
            poll()
            await asyncio.sleep(0.05)
        acked = sum(len(s.acked) for s in senders)
        lags = [
            archived_at[(s.room, seq)] - at
            for s in senders
            for seq, at in s.acked.items()
            if (s.room, seq) in archived_at
        ]
        batches = sum(metric(n, "chat_archive_batches_total") for n in (a, b))
        rows = sum(metric(n, "chat_archived_events_total") for n in (a, b))
        result: dict[str, Any] = {
            "rate": rate,
            "archive": archive_on,
            "messages_acked": acked,
            "window_s": round(elapsed, 2),
            "node_cpu_s": round(cpu, 3),
            "node_cpu_us_per_msg": round(cpu / max(1, acked) * 1e6, 1),
        }
        if archive_on:
            result.update(
                {
                    "archived": len(lags),
                    "lag_p50_s": round(quantile(lags, 0.5), 3),
                    "lag_p99_s": round(quantile(lags, 0.99), 3),
                    "lag_max_s": round(max(lags, default=float("nan")), 3),
                    "lag_bound_s": args.lag_s,
                    "rows_per_transaction": round(rows / max(1, batches), 1),
                }
            )
        return result
    finally:
        cluster.close()
        redis_server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for rate in (float(r) for r in args.rates.split(",")):
        for archive_on in (True, False):
            run = await one_run(args, rate, archive_on)
            print(json.dumps(run), flush=True)
            runs.append(run)
    by_rate: dict[float, dict[bool, dict[str, Any]]] = {}
    for run in runs:
        by_rate.setdefault(run["rate"], {})[run["archive"]] = run
    for pair in by_rate.values():
        if True in pair and False in pair:
            cost = pair[True]["node_cpu_us_per_msg"] - pair[False]["node_cpu_us_per_msg"]
            pair[True]["archive_cpu_us_per_msg"] = round(cost, 1)
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "args": vars(args),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--rates", default="40,400", help="messages/s over all rooms")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--lag-s", type=float, default=5.0)
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "archive.json").write_text(json.dumps(result, indent=2) + "\n")
    for run in result["runs"]:
        print(json.dumps(run))


if __name__ == "__main__":
    main()
