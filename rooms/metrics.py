"""Prometheus metrics, read from the runtime's counters and histograms at scrape time.

The hot path pays nothing for them beyond what ``cluster/stats.py`` does (int increments, one
histogram observation per event per node): no prometheus_client object is touched while
serving. Names follow Prometheus' conventions: base units in the name (``_seconds``), counters
end in ``_total``, histograms expose ``_bucket``/``_sum``/``_count``. The README's table lists
every metric; ``docs/grafana/clusterchat.json`` graphs them.

Besides ours, a scrape carries prometheus_client's default registry: the process collector
(``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ...), the GC and platform
collectors, and any metric other code registers there.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from cluster.runtime import ClusterRuntime
from cluster.stats import Histogram

from .archive import runtime_archivers


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    buckets = [(_le(bound), float(count)) for bound, count in histogram.cumulative()]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=histogram.sum)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class RuntimeCollector(Collector):
    def __init__(self, runtime: ClusterRuntime | None) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        rt = self._runtime
        up = GaugeMetricFamily("chat_node_ready", "1 while the node takes traffic")
        up.add_metric([], 1.0 if rt is not None and rt.ready else 0.0)
        yield up
        if rt is None:
            return
        stats = rt.stats
        gauges = {
            "chat_rooms_owned": ("rooms served by this node", len(rt.supervisor.servers)),
            "chat_connections": ("sockets open on this node", rt.fanout.connections),
            "chat_rooms_subscribed": ("rooms with local sockets", len(rt.fanout.rooms)),
            "chat_cluster_nodes": ("live nodes seen by this node", len(rt.membership.live)),
        }
        for name, (doc, value) in gauges.items():
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(value))
            yield g
        counters = {
            "chat_events_delivered": ("durable events fanned out here", rt.fanout.delivered),
            "chat_socket_deliveries": (
                "event frames handed to local sockets (events x local sockets)",
                stats.socket_deliveries,
            ),
            "chat_gaps_filled": ("pub/sub holes filled from the log", rt.fanout.gaps_filled),
            "chat_command_retries": ("commands retried while a room moved", rt.router.retries),
            "chat_commands_forwarded": ("commands sent to a remote owner", rt.router.remote),
            "chat_room_takeovers": ("rooms claimed from dead nodes", rt.supervisor.takeovers),
            "chat_room_handoffs": ("rooms handed to another node", rt.supervisor.handoffs),
            "chat_pubsub_reconnects": ("pub/sub reconnects", rt.hub.reconnects),
            "chat_pubsub_slot_moves": (
                "room channels subscribed again after their slot moved (Redis Cluster)",
                rt.hub.slot_moves,
            ),
            "chat_replica_waits": (
                "WAITs after a write (CHAT_REDIS_MIN_REPLICAS > 0)",
                rt.replicas.waits,
            ),
            "chat_replica_shortfalls": (
                "WAITs answered by fewer replicas than CHAT_REDIS_MIN_REPLICAS (answered "
                "unavailable)",
                rt.replicas.shortfalls,
            ),
            "chat_sockets_opened": ("sockets admitted to a room", stats.sockets_opened),
            "chat_slow_consumers_closed": (
                "sockets closed with 1013 because their client did not read",
                stats.slow_consumers_closed,
            ),
        }
        archiver = runtime_archivers.get(rt.node)
        if archiver is not None:
            lag = GaugeMetricFamily(
                "chat_archive_lag_seconds", "age of the newest archived batch's oldest event"
            )
            lag.add_metric([], archiver.lag_s)
            yield lag
            counters["chat_archived_events"] = ("events written to the archive", archiver.archived)
            counters["chat_archive_batches"] = ("archive transactions", archiver.batches)
        for name, (doc, value) in counters.items():
            c = CounterMetricFamily(name, doc)
            c.add_metric([], float(value))
            yield c
        commands = CounterMetricFamily(
            "chat_commands",
            "commands received on this node, by type and outcome (ok or the error code)",
            labels=["type", "outcome"],
        )
        for (kind, outcome), n in sorted(stats.commands.items()):
            commands.add_metric([kind, outcome], float(n))
        yield commands
        closed = CounterMetricFamily(
            "chat_sockets_closed",
            "sockets ended, by close code (the node's, else the client's; 'other' if unusual)",
            labels=["code"],
        )
        for code, n in sorted(stats.socket_closes.items()):
            closed.add_metric([code], float(n))
        yield closed
        errors = CounterMetricFamily(
            "chat_redis_errors",
            "Redis failures, by the component that met them",
            labels=["component"],
        )
        errors.add_metric(["pubsub"], float(rt.hub.errors))
        errors.add_metric(["membership"], float(rt.membership.redis_errors))
        errors.add_metric(["room_server"], float(stats.room_server_redis_errors))
        errors.add_metric(["delivery"], float(rt.fanout.delivery.failures))
        yield errors
        yield _histogram(
            "chat_ack_latency_seconds",
            "a command's arrival on a socket -> its ack written to that socket",
            stats.ack_latency,
        )
        yield _histogram(
            "chat_fanout_latency_seconds",
            "an event stamped by its room's owner (just before its append) -> written to this "
            "node's sockets; once per event per node (wall clocks: includes their skew)",
            stats.fanout_latency,
        )
        yield _histogram(
            "chat_room_handoff_duration_seconds",
            "a planned hand-off: this node's room server stops -> the successor serves",
            stats.handoff_duration,
        )
        yield _histogram(
            "chat_room_takeover_duration_seconds",
            "a take-over from a dead node: lease claim -> serving (log and state rebuilt)",
            stats.takeover_duration,
        )


class _DefaultRegistry(Collector):
    """prometheus_client's default registry (process, GC, platform, anything registered)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def render(runtime: ClusterRuntime | None) -> tuple[bytes, str]:
    registry = CollectorRegistry()
    registry.register(RuntimeCollector(runtime))
    registry.register(_DefaultRegistry())
    return generate_latest(registry), CONTENT_TYPE_LATEST
