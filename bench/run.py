"""Run the comparison: ``python -m bench.run [--quick] [--profile] [--systems ...]``.

Each system in turn gets a fresh Redis and two server processes; the same generator drives the
same scenarios against it; every record goes to one JSONL file; docs/benchmarks.md and its plots
are rewritten from that file at the end. Every process started here is ended here, by pid."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import pauses, report
from bench.loadgen import FULL, QUICK, Generator, Plan
from bench.proc import load_average
from bench.profiling import PySpyProfile, fold, render
from bench.systems import COMPARISON, ROOT, SYSTEMS, ProjectSystem, make_system, versions

RESULTS = ROOT / "bench" / "results"
SCENARIOS = ("idle", "s1", "big", "storm", "pauses")


class Results:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, sort_keys=True) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


async def run_system(
    name: str, plan: Plan, args: argparse.Namespace, work: Path, results: Results, run_id: str
) -> None:
    s1_rooms = [f"s1r{i:02d}" for i in range(20)]
    idle_rooms = [f"idle{i:02d}" for i in range(max(0, plan.idle_sockets - 1000) // 50)]
    rooms = ["warm0", *s1_rooms, "big0", *idle_rooms]
    system = make_system(name, work)
    budget = args.system_minutes * 60
    print(f"== {name}: starting (budget {budget:.0f} s)", flush=True)
    try:
        started = time.monotonic()
        await asyncio.to_thread(system.start, rooms)
        results.write(
            {
                "run": run_id,
                "system": name,
                "kind": "started",
                "start_s": round(time.monotonic() - started, 1),
                "server_pids": system.server_pids,
            }
        )
        generator = Generator(system, deadline=time.monotonic() + budget)
        await generator.warm_up()
        wants = set(args.scenarios)
        s1_records: list[dict[str, Any]] = []
        if wants & {"idle", "s1"}:
            # The S1 members are the first idle sockets measured: one connect phase, not two.
            await asyncio.sleep(1.0)
            before = generator.rss()
            meter = generator.meter()
            s1_clients, s1_connect = await generator.open_rooms("s1", s1_rooms, 50)
            results.write({"run": run_id, **s1_connect})
            extra: list[Any] = []
            connects = [s1_connect]
            if "idle" in wants and idle_rooms:
                extra, extra_connect = await generator.open_rooms("idle", idle_rooms, 50)
                results.write({"run": run_id, **extra_connect})
                connects.append(extra_connect)
            await asyncio.sleep(3.0)  # presence and buffers settle
            if "idle" in wants:
                record = generator.idle_record(before, s1_clients + extra, connects, meter.stop())
                print(
                    f"  idle: {record['kb_per_socket']} KB/socket, {record['connected']}/"
                    f"{record['sockets']} in {record['connect_s']} s",
                    flush=True,
                )
                results.write({"run": run_id, **record})
            await generator.close(extra)
            if "s1" in wants:
                for record in await generator.ramp(
                    "s1", s1_clients, s1_rooms, 2, plan.s1_rates, plan
                ):
                    s1_records.append(record)
                    results.write({"run": run_id, **record})
            await generator.close(s1_clients)
        if "storm" in wants and generator.time_left() > 20:
            record = await generator.storm(
                s1_rooms, plan.storm_sockets // len(s1_rooms), getattr(generator, "last_seq", {})
            )
            print(
                f"  storm: {record['connected']}/{record['sockets']} ready in "
                f"{record['all_ready_s']} s, p99 {record['connect_p99_ms']} ms",
                flush=True,
            )
            results.write({"run": run_id, **record})
        if "big" in wants and generator.time_left() > 20:
            big_clients, big_connect = await generator.open_rooms("big", ["big0"], 500)
            results.write({"run": run_id, **big_connect})
            for record in await generator.ramp(
                "big", big_clients, ["big0"], 2, plan.big_rates, plan
            ):
                results.write({"run": run_id, **record})
            await generator.close(big_clients)
        if "pauses" in wants:
            # its own time budget (pauses.PausePlan.budget_s), as the profile has; it kills and
            # drains nodes, then leaves the harness two fresh ones in their slots
            for record in await pauses.run(system, s1_rooms, s1_records, pauses.PausePlan()):
                print(pauses.summary(record), flush=True)
                results.write({"run": run_id, **record})
        # The default server only: one profile per run (the variants would write over it).
        if args.profile and isinstance(system, ProjectSystem) and name == "project":
            # last: the profiled step saturates the node, nothing is measured after it
            generator.deadline = max(generator.deadline, time.monotonic() + 120)
            s1_clients, s1_connect = await generator.open_rooms("s1", s1_rooms, 50)
            await profile_project(system, generator, plan, results, run_id, s1_clients, s1_rooms)
            await generator.close(s1_clients)
    finally:
        await asyncio.to_thread(system.stop)
        print(f"== {name}: stopped", flush=True)


async def profile_project(
    system: ProjectSystem,
    generator: Generator,
    plan: Plan,
    results: Results,
    run_id: str,
    s1_clients: list[Any],
    s1_rooms: list[str],
) -> None:
    raw = RESULTS / f"profile-{run_id}.raw"
    profile = PySpyProfile(system.node_pid(0), raw, plan.profile_s)
    records = await generator.ramp("s1", s1_clients, s1_rooms, 2, [], plan, profile=profile)
    for record in records:
        results.write({"run": run_id, "profiled": True, **record})
    out = RESULTS / f"profile-{run_id}.txt"
    step = next((r for r in records if r.get("kind") == "profile-step"), {})
    header = (
        f"# py-spy record -r {profile.rate} -d {int(plan.profile_s)} on one runnode (node a) "
        f"under S1 at {plan.profile_rate} deliveries/s offered\n"
        f"# run {run_id}; step: delivered {step.get('delivered_per_s')}/s, "
        f"p99 {step.get('p99_ms')} ms, lost {step.get('lost')}, load {step.get('loadavg')}"
    )
    if profile.error is not None or not raw.exists():
        out.write_text(f"{header}\npy-spy was not available: {profile.error}\n")
    else:
        out.write_text(render(fold(raw), header) + "\n")  # the .raw stays, untracked
    print(f"  profile: {out.relative_to(ROOT)}", flush=True)


async def main(args: argparse.Namespace) -> Path:
    plan = QUICK if args.quick else FULL
    if args.s1_rates or args.step_s:
        # a focused measurement (one system's CPU per delivery at chosen rates, say)
        plan = dataclasses.replace(
            plan,
            s1_rates=args.s1_rates or plan.s1_rates,
            step_s=args.step_s or plan.step_s,
        )
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = args.out or RESULTS / f"{'quick' if args.quick else 'full'}-{run_id}.jsonl"
    results = Results(path)
    results.write(
        {
            "run": run_id,
            "kind": "meta",
            "quick": args.quick,
            "systems": args.systems,
            "scenarios": args.scenarios,
            "cores": os.cpu_count(),
            "loadavg": load_average(),
            "plan": plan.__dict__,
            "versions": versions(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with tempfile.TemporaryDirectory(prefix="chat-bench-") as work:
        try:
            for name in args.systems:
                try:
                    await run_system(name, plan, args, Path(work), results, run_id)
                except Exception as exc:  # one system failing must not lose the others
                    print(f"== {name}: failed: {exc!r}", flush=True)
                    results.write(
                        {"run": run_id, "system": name, "kind": "failed", "error": repr(exc)[:2000]}
                    )
        finally:
            results.write(
                {
                    "run": run_id,
                    "kind": "end",
                    "loadavg": load_average(),
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            )
            results.close()
    return path


def _rates(text: str) -> list[int]:
    try:
        rates = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"rates are comma-separated integers: {text!r}") from None
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError(f"rates must be positive: {text!r}")
    return rates


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short steps, about 3-5 minutes")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also py-spy one project node under S1 (bench/results/profile-*.txt)",
    )
    parser.add_argument(
        "--systems",
        type=lambda s: s.split(","),
        default=list(COMPARISON),
        help=f"comma-separated, from {','.join(SYSTEMS)}",
    )
    parser.add_argument(
        "--scenarios",
        type=lambda s: s.split(","),
        default=list(SCENARIOS),
        help=f"comma-separated, from {','.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--system-minutes",
        type=float,
        default=None,
        help="time budget per system (default 3 quick, 6 full)",
    )
    parser.add_argument(
        "--s1-rates",
        type=_rates,
        default=None,
        help="S1's offered rates instead of the plan's, e.g. 4000,12000",
    )
    parser.add_argument("--step-s", type=float, default=None, help="seconds per rate step")
    parser.add_argument("--out", type=Path, default=None, help="JSONL file to append to")
    parser.add_argument("--no-report", action="store_true", help="leave docs/ alone")
    args = parser.parse_args(argv)
    if args.system_minutes is None:
        args.system_minutes = 3.0 if args.quick else 6.0
    for name in args.systems:
        if name not in SYSTEMS:
            parser.error(f"unknown system {name}")
    return args


def cli(argv: list[str] | None = None) -> None:
    args = parse(argv)
    with contextlib.suppress(asyncio.CancelledError):
        path = asyncio.run(main(args))
        print(f"results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        if not args.no_report:
            report.write(*report.latest_runs())


if __name__ == "__main__":
    cli()
