"""The connect storm alone, with a resume to make: ``python -m bench.storm_seeded``.

Two fresh project nodes; 20 rooms seeded with 20 messages each (so that every storm socket has
10 events to replay, whatever ran before); then the generator's storm (1,000 sockets, 50 a
room, all at once, each with ``after=`` 10 below its room's last seq) and the big room's 500
members (50 at a time). Prints one JSON record per phase. ``--profile FILE`` also records node
``a`` with py-spy for the whole of both phases (FILE.raw, and FILE folded). Every process
started here is ended here."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import websockets

from bench.clients import make_body
from bench.loadgen import Generator
from bench.profiling import PySpyProfile, fold, render
from bench.systems import make_system

ROOMS = [f"s1r{i:02d}" for i in range(20)]
SEED = 20  # messages per room before the storm
SEED_STEP = 999  # a step no scenario uses: the storm counts these as replayed
KEYS = ("all_connected_s", "all_ready_s", "connect_p50_ms", "connect_p99_ms", "resumed")
KEYS += ("replayed_frames", "presence_frames", "server_cpu_s", "loadavg")


async def seed(system: Any, room: str) -> int:
    """Send SEED messages to ``room`` and return its last seq (from the acks)."""
    last = 0
    async with websockets.connect(system.ws_url(0, room, "seeder")) as ws:
        for i in range(SEED):
            body = make_body(SEED_STEP, 0, i, time.monotonic_ns())
            await ws.send(json.dumps({"type": "send", "body": body, "client_id": f"seed-{i}"}))
        acks = 0
        while acks < SEED:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if frame.get("type") == "ack":
                acks += 1
                last = max(last, int(frame["seq"]))
    return last


def write_profile(out: Path) -> None:
    raw = Path(f"{out}.raw")
    if raw.exists():
        out.write_text(render(fold(raw), "storm, then the big room") + "\n")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="chat-storm-") as work:
        system = make_system("project", Path(work))
        await asyncio.to_thread(system.start, ["warm0", *ROOMS, "big0"])
        try:
            generator = Generator(system, deadline=time.monotonic() + 180)
            await generator.warm_up()
            last_seq = {room: await seed(system, room) for room in ROOMS}
            await asyncio.sleep(1.5)  # the seeders' presence settles
            profile = handle = None
            if args.profile is not None:
                profile = PySpyProfile(system.node_pid(0), Path(f"{args.profile}.raw"), 25)
                handle = profile.start()
                await asyncio.sleep(0.5)
            record = await generator.storm(ROOMS, 50, last_seq)
            print(json.dumps({"phase": "storm", **{k: record[k] for k in KEYS}}), flush=True)
            await asyncio.sleep(1.0)
            clients, big = await generator.open_rooms("big", ["big0"], 500)
            keys = ("connect_s", "connect_p50_ms", "connect_p99_ms", "presence_frames", "loadavg")
            print(json.dumps({"phase": "big", **{k: big[k] for k in keys}}), flush=True)
            await generator.close(clients)
            if profile is not None:
                await asyncio.to_thread(profile.finish, handle)
                await asyncio.to_thread(write_profile, Path(args.profile))
        finally:
            await asyncio.to_thread(system.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.storm_seeded", description=__doc__)
    parser.add_argument("--profile", help="py-spy node a into this file (and FILE.raw)")
    asyncio.run(main(parser.parse_args()))
