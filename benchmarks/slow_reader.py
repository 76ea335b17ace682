"""Slow-reader attack on one node (guarantee 10): what sockets that stop reading cost its memory.

    .venv/bin/python benchmarks/slow_reader.py [--events 5000] [--chars 4000] [--sockets 10]

Starts its own Redis and one ``runnode``, fills a room with ``--events`` messages of ``--chars``
characters (2 bytes each in UTF-8), then:

1. ``--sockets`` sockets join with ``after=0`` and never read;
2. one socket reads part of the replay, stops mid-stream while live messages keep coming, and
   later resumes with ``after=`` its last seq.

The node's RSS (``/proc/PID/status`` VmRSS) is sampled throughout; the figures are printed and
written to benchmarks/results/slow_reader.json. Every wait is bounded; every process it started
is ended before it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

import websockets  # noqa: E402

from cluster.embedded import EmbeddedRedis  # noqa: E402
from tests.support.client import ChatClient  # noqa: E402
from tests.support.nodes import Cluster, Node  # noqa: E402
from tests.support.stalled_socket import StalledSocket, rss_bytes, seed_room  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MIB = 1 << 20
ROOM = "slow"


def closes_1013(node: Node) -> int:
    return len(stalled_bytes(node))


def stalled_bytes(node: Node) -> list[int]:
    """What the server held for each socket when it closed it with 1013 (from the node's log)."""
    assert node.log_path is not None
    text = node.log_path.read_text(errors="replace")
    return [int(n) for n in re.findall(r"stalled with (\d+) bytes unread; closing with 1013", text)]


class RssSampler:
    """Samples a process's RSS every ``step`` seconds in the background (a thread-free loop)."""

    def __init__(self, pid: int, step: float = 0.1) -> None:
        self.pid = pid
        self.step = step
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None
        self._started = time.monotonic()

    def start(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self._started, rss_bytes(self.pid)))
            await asyncio.sleep(self.step)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    @property
    def peak(self) -> int:
        return max(rss for _, rss in self.samples)


async def wait_closes(node: Node, at_least: int, timeout: float) -> float | None:
    """Seconds until the node's log shows ``at_least`` 1013 closes, or None on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if closes_1013(node) >= at_least:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    return None


async def talk(node: Node, count: int, body: str) -> int:
    """``count`` live messages, one at a time; the last acked seq."""
    last = 0
    url = f"{node.ws}/ws/rooms/{ROOM}/?name=talker"
    async with websockets.connect(url, max_size=None) as ws:
        for i in range(count):
            frame = {"type": "send", "body": body, "client_id": f"talk-{uuid.uuid4().hex}-{i}"}
            await ws.send(json.dumps(frame, ensure_ascii=False))
            while True:
                answer = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if answer["type"] == "ack":
                    last = int(answer["seq"])
                    break
                if answer["type"] == "error":
                    raise RuntimeError(f"live send refused: {answer}")
    return last


async def scenario(node: Node, args: argparse.Namespace) -> dict[str, Any]:
    body = "é" * args.chars
    started = time.monotonic()
    last_seq = await seed_room(node.ws, ROOM, args.events, body)
    seed_s = time.monotonic() - started
    # Baseline after one full replay to a reading client: what normal use leaves allocated.
    # Its duration is the replay speed for a client that reads as fast as it can.
    reader = ChatClient(node.ws, ROOM, "warm")
    started = time.monotonic()
    await reader.connect(after=0)
    await reader.wait_for(lambda: reader.last_seq >= last_seq, 120)
    replay_s = time.monotonic() - started
    await reader.close()
    baseline = rss_bytes(node.pid)
    result: dict[str, Any] = {
        "seed_s": round(seed_s, 1),
        "replay_to_a_reading_client_s": round(replay_s, 2),
        "baseline_mib": round(baseline / MIB, 1),
    }

    # 1. Sockets that never read.
    before = closes_1013(node)
    sampler = RssSampler(node.pid).start()
    stalled = [
        StalledSocket(node.port, f"/ws/rooms/{ROOM}/?name=stall{i}&after=0").connect()
        for i in range(args.sockets)
    ]
    closed_after = await wait_closes(node, before + args.sockets, args.timeout)
    await sampler.stop()
    growth = sampler.peak - baseline
    codes = []
    for sock in stalled:
        await asyncio.to_thread(sock.read_all, 15)
        codes.append(sock.close_code)
        sock.close()
    result["never_reading"] = {
        "sockets": args.sockets,
        "peak_growth_mib": round(growth / MIB, 1),
        "per_socket_mib": round(growth / MIB / args.sockets, 2),
        "closed_1013_after_s": None if closed_after is None else round(closed_after, 1),
        "close_codes": sorted({str(c) for c in codes}),
        "events_received_before_close": sorted(len(s.seqs) for s in stalled),
        "rss_after_close_mib": round((rss_bytes(node.pid) - baseline) / MIB, 1),
        "server_held_at_close_kib_max": round(max(stalled_bytes(node) or [0]) / 1024),
    }

    print(json.dumps(result, indent=2), file=sys.stderr, flush=True)

    # 2. A socket that reads part of the replay, then stops while live traffic goes on.
    baseline2 = rss_bytes(node.pid)
    before = closes_1013(node)
    sampler = RssSampler(node.pid).start()
    partial = StalledSocket(node.port, f"/ws/rooms/{ROOM}/?name=partial&after=0", rcvbuf=65536)
    partial.connect()
    await asyncio.to_thread(partial.read_durable, min(200, last_seq), 30)
    live_last = await talk(node, args.live, body)
    closed_after = await wait_closes(node, before + 1, args.timeout)
    await sampler.stop()
    await asyncio.to_thread(partial.read_all, 15)
    partial.close()
    first = partial.seqs
    resumed = ChatClient(node.ws, ROOM, "partial")
    await resumed.connect(after=first[-1] if first else 0)
    try:
        await resumed.wait_for(lambda: resumed.last_seq >= live_last, args.timeout)
    except TimeoutError:
        pass  # reported below as not every event once
    await resumed.close()
    second = [int(f["seq"]) for f in resumed.durable]
    every_once = first + second == list(range(1, live_last + 1))
    result["stops_mid_stream"] = {
        "read_before_stopping": min(200, last_seq),
        "received_before_close": len(first),
        "live_messages_meanwhile": args.live,
        "close_code": partial.close_code,
        "closed_1013_after_s": None if closed_after is None else round(closed_after, 1),
        "peak_growth_mib": round((sampler.peak - baseline2) / MIB, 1),
        "resumed_every_event_once": every_once,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--chars", type=int, default=4000)
    parser.add_argument("--sockets", type=int, default=10)
    parser.add_argument("--live", type=int, default=100, help="live messages in part 2")
    parser.add_argument("--budget", type=int, default=1 << 20, help="CHAT_SOCKET_BUFFER_BYTES")
    parser.add_argument("--timeout", type=float, default=60.0, help="bound on each wait")
    parser.add_argument("--out", default=str(RESULTS / "slow_reader.json"))
    args = parser.parse_args()

    redis_server = EmbeddedRedis.start(appendonly=False)
    data_dir = Path(tempfile.mkdtemp(prefix="slow-reader-"))
    cluster: Cluster | None = None
    try:
        cluster = Cluster(
            redis_server.url,
            data_dir,
            CHAT_RATE_LIMIT="1000000/1",
            CHAT_RATE_LIMIT_PER_ADDRESS="1000000/1",
            CHAT_SOCKET_BUFFER_BYTES=str(args.budget),
            CHAT_MAX_SOCKETS_PER_ADDRESS=str(max(200, args.sockets + 10)),
        )
        cluster.create_room(ROOM)
        node = cluster.add("slow1")
        figures = asyncio.run(asyncio.wait_for(scenario(node, args), 20 * args.timeout))
    finally:
        if cluster is not None:
            cluster.close()
        redis_server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    report = {
        "events": args.events,
        "chars_per_event": args.chars,
        "bytes_per_event_utf8": 2 * args.chars,
        "budget_bytes": args.budget,
        **figures,
    }
    print(json.dumps(report, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
