"""What a node measures about itself, as plain data: counters and fixed-bucket histograms.

``cluster/`` knows nothing of Prometheus (nor of Django): ``rooms/metrics.py`` reads these at
scrape time and exports them. Everything here is cheap enough for the hot path: a counter is an
int increment, an observation is one ``bisect`` over a short tuple and two additions. Nothing
here is called per socket per event (see ``delivery.py``: once per event per node).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

# Upper bounds in seconds (Prometheus ``le``): from a local append (~1 ms) to a send timeout.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Hand-offs (tens of ms) and take-overs (a lease TTL and more) last longer.
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class Histogram:
    """Counts of observations per bucket (not cumulative; the exporter sums them), their sum
    and their number. The last slot counts what is above the highest bound (``+Inf``)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram bounds must be increasing and not empty")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound falls in that bound's bucket (``le``).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(le, count of observations <= le)`` for every bound and ``inf``, as Prometheus
        exposes them."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


def latency_histogram() -> Histogram:
    return Histogram(LATENCY_BUCKETS_S)


def duration_histogram() -> Histogram:
    return Histogram(DURATION_BUCKETS_S)


@dataclass
class NodeStats:
    """One node's measurements that are neither a component's own counter nor a gauge read
    from its state. Owned by the runtime; components get it at construction."""

    # command type ("send", "edit", "delete", "typing", "invalid") and outcome ("ok" or an
    # error code) -> how many; counted once, on the node the command arrived at.
    commands: Counter[tuple[str, str]] = field(default_factory=Counter)
    # command arrival on a socket -> its ack (or error) written back.
    ack_latency: Histogram = field(default_factory=latency_histogram)
    # the event's ``ts`` (stamped by the owner just before its append) -> written to this
    # node's sockets. Wall clock across nodes: includes their clock skew.
    fanout_latency: Histogram = field(default_factory=latency_histogram)
    # a planned hand-off: our room server stops -> the successor confirms it serves the room.
    handoff_duration: Histogram = field(default_factory=duration_histogram)
    # a take-over from a dead node: claim -> serving (the log and state rebuilt).
    takeover_duration: Histogram = field(default_factory=duration_histogram)
    # socket frames handed to local sockets: events x the room's local sockets (one addition
    # per event, not per socket).
    socket_deliveries: int = 0
    # Redis failures seen while serving commands (the append may or may not have landed).
    room_server_redis_errors: int = 0
    # Sockets admitted to a room on this node, and sockets ended by close code (the code the
    # node sent, else the client's; a code outside KNOWN_CLOSE_CODES counts as "other").
    sockets_opened: int = 0
    socket_closes: Counter[str] = field(default_factory=Counter)
    # Sockets the node closed with 1013 because their client did not read (slow consumers).
    slow_consumers_closed: int = 0

    def count_command(self, kind: str, outcome: str) -> None:
        self.commands[(kind, outcome)] += 1

    def count_close(self, code: int) -> None:
        # A client may send any code from 1000 to 4999: a label per code would be unbounded.
        self.socket_closes[str(code) if code in KNOWN_CLOSE_CODES else "other"] += 1


# Close codes the node sends or a browser commonly does (1000 normal, 1001 going away,
# 1006 no close frame, 1011 internal, 1012 draining, 1013 too slow, 44xx refusals).
KNOWN_CLOSE_CODES = frozenset({1000, 1001, 1006, 1011, 1012, 1013, 4403, 4404, 4429})
