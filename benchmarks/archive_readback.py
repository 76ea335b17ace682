"""A big room read back through the API, most of it from the archive (issue 11's "done when").

    .venv/bin/python benchmarks/archive_readback.py [--messages 100000] [--history 1000]

Starts its own Redis and one ``runnode`` (``CHAT_HISTORY_LIMIT=--history``,
``CHAT_ARCHIVE_LAG_S=1``), sends ``--messages`` messages through the protocol, waits for the
archive to hold them all, then reads the whole room back with ``GET /api/rooms/SLUG/events?
after=`` (pages of 1,000) and with ``?before=`` (pages of 1,000, newest to oldest), and checks
that both give every seq from 1 to the last exactly once with no ``first_available``. Prints
the times and writes them to benchmarks/results/archive_readback.json.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

import redis as redis_client  # noqa: E402

from cluster.embedded import EmbeddedRedis  # noqa: E402
from tests.support.nodes import Cluster  # noqa: E402
from tests.support.stalled_socket import seed_room  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ROOM = "big"


def archived_upto(db_path: Path) -> int:
    with sqlite3.connect(db_path, timeout=10) as db:
        row = db.execute(
            "SELECT c.upto FROM rooms_archivecursor c JOIN rooms_room r ON r.id = c.room_id "
            "WHERE r.slug = ?",
            (ROOM,),
        ).fetchone()
    return int(row[0]) if row else 0


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="archive-readback-"))
    redis_server = EmbeddedRedis.start(data_dir / "redis", appendonly=False)
    cluster = Cluster(
        redis_server.url,
        data_dir,
        CHAT_RATE_LIMIT="1000000/1",
        CHAT_HISTORY_LIMIT=str(args.history),
        CHAT_ARCHIVE_LAG_S="1",
        CHAT_LOG_LEVEL="WARNING",
    )
    try:
        cluster.create_room(ROOM)
        node = cluster.add("a")
        started = time.monotonic()
        last = await seed_room(node.ws, ROOM, args.messages, "x" * 64)
        sent_s = time.monotonic() - started
        waited = time.monotonic()
        deadline = waited + 120
        while archived_upto(data_dir / "chat.sqlite3") < last and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        catch_up_s = time.monotonic() - waited
        assert archived_upto(data_dir / "chat.sqlite3") >= last, "archive did not catch up"
        # What Redis still holds: its first kept seq, read from the log directly.
        r = redis_client.Redis.from_url(redis_server.url)
        first = r.xrange(f"chat:{{room:{ROOM}}}:log", count=1)
        kept_from = int(first[0][0].decode().split("-")[0]) if first else None
        r.close()

        started = time.monotonic()
        seqs: list[int] = []
        flagged = 0
        after = 0
        for _ in range(args.messages // 1000 + 10):
            status, page = node.get(f"/api/rooms/{ROOM}/events?after={after}&limit=1000")
            assert status == 200, page
            flagged += "first_available" in page
            if not page["events"]:
                break
            seqs.extend(int(e["seq"]) for e in page["events"])
            after = seqs[-1]
        forward_s = time.monotonic() - started
        forward_ok = seqs == list(range(1, last + 1)) and not flagged

        started = time.monotonic()
        backward: list[int] = []
        before = last + 1
        for _ in range(args.messages // 1000 + 10):
            status, page = node.get(f"/api/rooms/{ROOM}/events?before={before}&limit=1000")
            assert status == 200, page
            flagged += "first_available" in page
            if not page["events"]:
                break
            backward = [int(e["seq"]) for e in page["events"]] + backward
            before = int(page["events"][0]["seq"])
            if before == 1:
                break
        backward_s = time.monotonic() - started
        backward_ok = backward == list(range(1, last + 1)) and not flagged
        return {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cores": os.cpu_count(),
            "load_average": list(os.getloadavg()),
            "messages": last,
            "history_limit": args.history,
            "redis_kept_from_seq": kept_from,
            "send_s": round(sent_s, 2),
            "archive_caught_up_after_s": round(catch_up_s, 2),
            "read_forward_s": round(forward_s, 2),
            "read_forward_every_seq_once": forward_ok,
            "read_backward_s": round(backward_s, 2),
            "read_backward_every_seq_once": backward_ok,
        }
    finally:
        cluster.close()
        redis_server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--history", type=int, default=1000)
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "archive_readback.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
