"""What the kernel says about a process: CPU time and resident memory, read from /proc."""

from __future__ import annotations

import os
import resource
import time
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid`` (0.0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except OSError:
        return 0


def total_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def total_rss(pids: list[int]) -> int:
    return sum(rss_bytes(pid) for pid in pids)


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


class CpuMeter:
    """CPU seconds spent by some processes (and by this one) between ``start`` and ``stop``."""

    def __init__(self, server_pids: list[int], redis_pid: int) -> None:
        self.server_pids = server_pids
        self.redis_pid = redis_pid
        self.start()

    def start(self) -> None:
        self._wall = time.monotonic()
        self._server = total_cpu(self.server_pids)
        self._per_server = [cpu_seconds(pid) for pid in self.server_pids]
        self._redis = cpu_seconds(self.redis_pid)
        self._own = own_cpu()

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self._wall
        return {
            "wall_s": wall,
            "server_cpu_s": total_cpu(self.server_pids) - self._server,
            "per_server_cpu_s": [
                cpu_seconds(pid) - before
                for pid, before in zip(self.server_pids, self._per_server, strict=True)
            ],
            "redis_cpu_s": cpu_seconds(self.redis_pid) - self._redis,
            "generator_cpu_s": own_cpu() - self._own,
        }
