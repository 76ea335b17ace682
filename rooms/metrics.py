"""Prometheus metrics, read from the runtime's counters at scrape time (no hot-path cost)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from cluster.runtime import ClusterRuntime

from .archive import runtime_archivers


class RuntimeCollector(Collector):
    def __init__(self, runtime: ClusterRuntime | None) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        rt = self._runtime
        up = GaugeMetricFamily("chat_node_ready", "1 while the node takes traffic")
        up.add_metric([], 1.0 if rt is not None and rt.ready else 0.0)
        yield up
        if rt is None:
            return
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
            "chat_gaps_filled": ("pub/sub holes filled from the log", rt.fanout.gaps_filled),
            "chat_command_retries": ("commands retried while a room moved", rt.router.retries),
            "chat_commands_forwarded": ("commands sent to a remote owner", rt.router.remote),
            "chat_room_takeovers": ("rooms claimed from dead nodes", rt.supervisor.takeovers),
            "chat_room_handoffs": ("rooms handed to another node", rt.supervisor.handoffs),
            "chat_pubsub_reconnects": ("pub/sub reconnects", rt.hub.reconnects),
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


def render(runtime: ClusterRuntime | None) -> tuple[bytes, str]:
    registry = CollectorRegistry()
    registry.register(RuntimeCollector(runtime))
    return generate_latest(registry), CONTENT_TYPE_LATEST
