"""py-spy on one node while a scenario runs, folded into the functions that take the time."""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def py_spy_binary() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class PySpyProfile:
    """``py-spy record -f raw`` of ``pid`` for ``duration`` seconds, started by ``start``."""

    def __init__(self, pid: int, raw_path: Path, duration: float, rate: int = 200) -> None:
        self.pid = pid
        self.raw_path = raw_path
        self.duration = duration
        self.rate = rate
        self.error: str | None = None

    def start(self) -> subprocess.Popen[bytes] | None:
        binary = py_spy_binary()
        if binary is None:
            self.error = "py-spy is not installed"
            return None
        args = [
            binary,
            "record",
            "-p",
            str(self.pid),
            "-d",
            str(int(self.duration)),
            "-r",
            str(self.rate),
            "--threads",
            # Only samples that hold the GIL: CPU spent in Python. Without it py-spy also counts
            # the time a thread waits, preempted, inside a send() (on 2 shared cores that made
            # the socket writes look like half the node; perf showed 22 % kernel in all).
            "--gil",
            "-f",
            "raw",
            "-o",
            str(self.raw_path),
        ]
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def finish(self, handle: subprocess.Popen[bytes] | None) -> None:
        if handle is None:
            return
        try:
            output, _ = handle.communicate(timeout=self.duration + 60)
        except subprocess.TimeoutExpired:
            handle.kill()  # our own child, by its handle
            output, _ = handle.communicate()
        if handle.returncode != 0 or not self.raw_path.exists():
            self.error = f"py-spy failed ({handle.returncode}): {output.decode()[-800:]}"


def _function(frame: str) -> str:
    """``name (path/to/file.py:123)`` -> ``name (file.py)``: one line per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


def _package(frame: str) -> str:
    """The top-level package of a frame's file (py-spy prints paths from sys.path down)."""
    path = frame.partition(" (")[2].rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    elif path.startswith("/"):
        parts = parts[-1:]
    return parts[0].removesuffix(".py") if parts and parts[0] else "?"


def fold(raw_path: Path, top: int = 40) -> dict[str, Any]:
    """Self and inclusive sample shares per function, self shares per package."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack.split(";")
        thread = next((f for f in parts if f.startswith("thread (")), "thread (?)")
        frames = [f for f in parts if " (" in f and not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        threads[thread] += count
        if "MainThread" not in thread:
            continue  # the event loop is the one thread that matters: it does all the work
        total += count
        own[_function(frames[-1])] += count
        packages[_package(frames[-1])] += count
        for name in {_function(f) for f in frames}:
            inclusive[name] += count

    def shares(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    everything = sum(threads.values()) or 1
    return {
        "samples": total,
        "all_samples": everything,
        "self": shares(own),
        "inclusive": shares(inclusive),
        "packages": shares(packages),
        "threads": [(n, round(100 * c / everything, 1)) for n, c in threads.most_common(top)],
    }


def render(folded: dict[str, Any], header: str) -> str:
    lines = [
        header,
        f"samples: {folded['all_samples']} in all threads, {folded['samples']} in the main thread"
        " (the event loop); the tables below are shares of the main thread's samples",
        "",
    ]
    for title, key in (
        ("self time (leaf frame)", "self"),
        ("inclusive", "inclusive"),
        ("self time by package", "packages"),
        ("samples by thread", "threads"),
    ):
        lines.append(f"## {title}, % of samples")
        lines += [f"{share:6.1f}  {name}" for name, share in folded[key]]
        lines.append("")
    return "\n".join(lines)
