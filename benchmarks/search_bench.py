"""The archive's portable search (``/api/rooms/SLUG/search``) on a big room.

    .venv/bin/python benchmarks/search_bench.py [--messages 100000] [--database-url URL]

Fills one room of a fresh database (a temporary SQLite file unless ``--database-url``) with
``--messages`` archived messages of ~60 characters, then times ``rooms.archive.search_sync``
for: a word in the newest message only, a word in the oldest message only (the whole room is
read), a word in every message, and a word in none (the whole room is read). Prints the
median of 5 runs of each, in ms, and writes them to benchmarks/results/search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="search-bench-")
    os.environ["DATABASE_URL"] = args.database_url or f"sqlite:///{tmp}/search.sqlite3"
    os.environ["CHAT_DATA_DIR"] = tmp
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    import django

    django.setup()
    from django.core.management import call_command

    from rooms.archive import search_sync
    from rooms.models import Message
    from rooms.services import room_create

    call_command("migrate", verbosity=0)
    room, _ = room_create(slug="big")
    now = datetime.now(tz=UTC)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    batch = []
    for seq in range(1, args.messages + 1):
        body = " ".join(words[(seq + i) % len(words)] for i in range(6)) + f" common n{seq}"
        if seq == 1:
            body += " oldestonly"
        if seq == args.messages:
            body += " newestonly"
        batch.append(
            Message(
                room=room, seq=seq, message_id=f"m{seq}", author_name="a", body=body, created=now
            )
        )
        if len(batch) == 5000:
            Message.objects.bulk_create(batch)
            batch = []
    Message.objects.bulk_create(batch)
    figures = {}
    for label, word in (
        ("newest_only", "newestonly"),
        ("oldest_only", "oldestonly"),
        ("every_message", "common"),
        ("no_message", "zulu"),
    ):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            found = search_sync("big", [word], before=None, limit=20)
            times.append((time.perf_counter() - start) * 1000)
        figures[label] = {"median_ms": round(statistics.median(times), 1), "found": len(found)}
        print(label, figures[label], flush=True)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "messages": args.messages,
        "database": "sqlite" if not args.database_url else "given",
        "load_average": list(os.getloadavg()),
        "figures": figures,
    }
    out = ROOT / "benchmarks" / "results" / "search.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
