"""A randomized chaos campaign: N nodes, several rooms, clients spread over the nodes, a fault
every few seconds chosen by a seeded RNG; then the history checker.

    python -m tests.chaos.campaign --duration 600 --seed 42

The seed fixes which faults come, in which order, on which rooms (not the exact timing: real
processes race). Exit status 0 when the checker found nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from tests.chaos import faults
from tests.chaos.harness import Run
from tests.chaos.recorder import now
from tests.chaos.world import Settings, World

FAULT_TIMEOUT_S = 90.0  # a fault that takes longer is itself a finding; the campaign goes on
HEAL_TIMEOUT_S = 60.0
MAX_UNHEALED = 3  # faults in a row after which the cluster did not heal: stop, report

Choice = Callable[[World, random.Random, Run], Awaitable[str]]


async def _kill_owner(world: World, rng: random.Random, run: Run) -> str:
    return await faults.kill_owner(world, rng, rng.choice(world.settings.rooms))


async def _kill_non_owner(world: World, rng: random.Random, run: Run) -> str:
    return await faults.kill_non_owner(world, rng, rng.choice(world.settings.rooms))


async def _drain(world: World, rng: random.Random, run: Run) -> str:
    return await faults.drain_node(world, rng.choice(world.alive()))


async def _pause_owner(world: World, rng: random.Random, run: Run) -> str:
    node = await faults.pick_node(world, rng, rng.choice(world.settings.rooms), owner=True)
    lease_s = world.settings.lease_ms / 1000
    return await faults.pause_node(world, node, pause_s=lease_s * (1.2 + rng.random()))


async def _redis_aof(world: World, rng: random.Random, run: Run) -> str:
    return await faults.restart_redis(world, keep_data=True, down_s=0.5 + rng.random())


async def _redis_empty(world: World, rng: random.Random, run: Run) -> str:
    return await faults.restart_redis(world, keep_data=False, down_s=0.5 + rng.random())


async def _promote(world: World, rng: random.Random, run: Run) -> str:
    if world.replica is None:
        await world.add_replica()
    done = await faults.promote_lagging_replica(world, lag_s=0.5 + rng.random() * 1.5)
    await world.add_replica()  # the next promotion needs a replica of the new primary
    return done


async def _slow(world: World, rng: random.Random, run: Run) -> str:
    return await faults.slow_redis(world, delay_s=rng.choice([0.02, 0.05, 0.1]),
                                   for_s=1 + rng.random() * 3)  # fmt: skip


async def _reset(world: World, rng: random.Random, run: Run) -> str:
    return await faults.reset_redis_links(world)


async def _blackhole(world: World, rng: random.Random, run: Run) -> str:
    return await faults.blackhole_redis(world, for_s=1 + rng.random() * 4)


async def _churn(world: World, rng: random.Random, run: Run) -> str:
    """A member leaves (its socket closes) and comes back a little later: presence moves."""
    client = rng.choice([c for c in run.clients if c.connected] or run.clients)
    world.note(f"client {client.label} leaves for a while")
    await client.close()
    await asyncio.sleep(0.5 + rng.random() * 2)
    return f"churn {client.label}"


# name -> (weight, injector)
MENU: dict[str, tuple[int, Choice]] = {
    "kill owner": (3, _kill_owner),
    "kill non-owner": (2, _kill_non_owner),
    "drain": (3, _drain),
    "pause owner": (2, _pause_owner),
    "redis restart (AOF)": (2, _redis_aof),
    "redis restart (empty)": (1, _redis_empty),
    "promote lagging replica": (1, _promote),
    "slow redis": (2, _slow),
    "reset redis links": (2, _reset),
    "blackhole redis": (2, _blackhole),
    "client churn": (2, _churn),
}


async def campaign(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="chaos-"))
    rooms = tuple(f"room{i + 1}" for i in range(args.rooms))
    settings = Settings(nodes=args.nodes, rooms=rooms, proxy=True, replica=True,
                        lease_ms=args.lease_ms, send_timeout_ms=args.send_timeout_ms)  # fmt: skip
    print(f"chaos campaign: seed {args.seed}, {args.duration:.0f}s, {args.nodes} nodes, "
          f"{args.rooms} rooms x {args.clients} clients, a fault every ~{args.fault_every}s, "
          f"files in {tmp}", flush=True)  # fmt: skip
    world = World(tmp, settings)
    run = Run(world, random.Random(rng.random()), clients_per_room=args.clients)
    tally: Counter[str] = Counter()
    failed: list[str] = []
    ok = False
    try:
        await world.start()
        await run.start()
        await run.until_acked(10, timeout_s=60)
        started = now()
        names = args.faults or list(MENU)
        weights = [MENU[n][0] for n in names]
        unhealed = 0
        while now() - started < args.duration:
            await asyncio.sleep(args.fault_every * (0.5 + rng.random()))
            if now() - started >= args.duration:
                break
            name = rng.choices(names, weights)[0]
            tally[name] += 1
            try:
                await asyncio.wait_for(MENU[name][1](world, rng, run), FAULT_TIMEOUT_S)
            except Exception as exc:  # the campaign records it and goes on
                failed.append(f"{name}: {exc!r}"[:300])
                world.note(f"fault {name} failed: {exc!r}"[:300])
            try:
                await _heal(world)
                unhealed = 0
            except Exception as exc:
                unhealed += 1
                world.note(f"could not heal the cluster: {exc!r}"[:300])
                if unhealed >= MAX_UNHEALED:
                    world.anomalies.append(
                        f"cluster not healed after {unhealed} tries: {exc!r}"[:500]
                    )
                    break
        print("faults: " + ", ".join(f"{n} x{k}" for n, k in sorted(tally.items())), flush=True)
        for room in rooms:
            await run.add_resumer(room)
        report = await run.finish()
        print(report.summary())
        print(f"node RSS at the end (MiB): {_rss(world)}")
        for line in failed:
            print(f"  fault that did not complete: {line}")
        ok = report.ok and not world.anomalies
    finally:
        await run.close()
        await world.close()
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"node logs and Redis files kept in {tmp}")
            if (tmp / "history.json").exists():
                print(f"check again: python -m tests.chaos.checker {tmp}/history.json")
        print(f"chaos campaign seed {args.seed}: {'PASSED' if ok else 'FAILED'}", flush=True)
    return 0 if ok else 1


async def _heal(world: World) -> None:
    """Bring back what a fault left down (a fault that failed half-way), bounded."""
    for node in world.nodes:
        if node.process is None or node.process.poll() is not None:
            world.note(f"node {node.name} found down: restarting it")
            await faults.restart_node(world, node)
    await world.wait_ready(HEAL_TIMEOUT_S)


def _rss(world: World) -> dict[str, int]:
    out = {}
    for node in world.alive():
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{node.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[node.name] = int(line.split()[1]) // 1024
    return out


async def _interruptible(work: Coroutine[Any, Any, int]) -> int:
    """SIGINT or SIGTERM cancel the campaign, so that its clean-up ends every process it
    started (a campaign in the background ignores SIGINT: SIGTERM it)."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        print("chaos campaign interrupted", flush=True)
        return 130


def _fault_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MENU]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown faults {unknown}; known: {', '.join(MENU)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of faults")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rooms", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3, help="clients per room")
    parser.add_argument("--fault-every", type=float, default=5.0, help="seconds, on average")
    parser.add_argument("--lease-ms", type=int, default=1500)
    parser.add_argument("--send-timeout-ms", type=int, default=3000)
    parser.add_argument("--keep", action="store_true", help="keep logs even when it passes")
    parser.add_argument("--faults", type=_fault_names, default=None,
                        help="comma-separated subset of: " + ", ".join(MENU))  # fmt: skip
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 2**31)
    print(f"seed {args.seed} (again: --seed {args.seed})", flush=True)
    started = time.monotonic()
    code = asyncio.run(_interruptible(campaign(args)))
    print(f"took {time.monotonic() - started:.0f}s")
    return code


if __name__ == "__main__":
    sys.exit(main())
