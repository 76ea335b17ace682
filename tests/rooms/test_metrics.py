"""``/metrics`` after real traffic on real ``runnode`` processes (issue 12 item 3): every metric
has its Prometheus type and labels, counters and histogram counts move with the traffic that
should move them, the default process and GC collectors are kept, and the dashboard graphs
only metrics a node exposes.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import ChatClient
from tests.support.nodes import ROOT, Cluster, Node, manage

ROOMS = [f"m{i}" for i in range(8)]
DASHBOARD = ROOT / "docs" / "grafana" / "clusterchat.json"

Scrape = dict[str, tuple[str, dict[tuple[tuple[str, str], ...], float]]]


@pytest.fixture(scope="module")
def cluster(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # A small rate limit so that a test can reach it; a short TTL so that a take-over is quick.
    cluster = Cluster(
        redis_server,
        Path(tmp_path_factory.mktemp("metrics")),
        CHAT_RATE_LIMIT="6/60",
        CHAT_LEASE_TTL_MS="1000",
    )
    # One process for all rooms: a manage.py start costs seconds on a busy machine.
    create = "from django.core.management import call_command\n" + "".join(
        f"call_command('createroom', {slug!r})\n" for slug in ROOMS
    )
    manage("shell", "-c", create, env=cluster.env)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def node(cluster: Cluster) -> Node:
    return cluster.add("metrics-a")


def scrape(node: Node) -> Scrape:
    with urllib.request.urlopen(f"{node.http}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        samples: dict[tuple[tuple[str, str], ...], float] = {}
        for sample in family.samples:
            key = (("__name__", sample.name), *sorted(sample.labels.items()))
            samples[key] = sample.value
        out[family.name] = (family.type, samples)
    return out


def value(scraped: Scrape, family: str, sample: str, **labels: str) -> float:
    key = (("__name__", sample), *sorted(labels.items()))
    return scraped[family][1].get(key, 0.0)


def errors(client: ChatClient) -> list[dict[str, object]]:
    return [f for f in client.frames if f.get("type") == "error"]


def hist_count(scraped: Scrape, family: str) -> float:
    return value(scraped, family, f"{family}_count")


async def test_traffic_moves_every_counter_it_should(node: Node) -> None:
    before = scrape(node)
    alice = ChatClient(node.ws, "m0", "alice")
    bob = ChatClient(node.ws, "m0", "bob")
    await alice.connect()
    await bob.connect()
    for i in range(4):
        await alice.send(f"hello {i}")
    await alice.wait_for(lambda: len(alice.acks) == 4)
    await bob.wait_for(lambda: len(bob.durable) == 4)
    await alice.send_frame({"type": "nonsense"})
    await alice.ws.send("not json")  # type: ignore[union-attr]
    for i in range(4):  # 6 per minute: two more pass, two are refused
        await alice.send(f"more {i}")
    await alice.wait_for(lambda: len(alice.acks) + len(errors(alice)) >= 4 + 2 + 4)
    await bob.close()
    await alice.close()

    after: Scrape = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the node counts a close once its socket is gone
        after = scrape(node)
        closed = value(after, "chat_sockets_closed", "chat_sockets_closed_total", code="1000")
        if (
            closed - value(before, "chat_sockets_closed", "chat_sockets_closed_total", code="1000")
            >= 2
        ):
            break
        await asyncio.sleep(0.1)

    def delta(family: str, sample: str, **labels: str) -> float:
        return value(after, family, sample, **labels) - value(before, family, sample, **labels)

    assert after["chat_commands"][0] == "counter"
    assert delta("chat_commands", "chat_commands_total", type="send", outcome="ok") == 6
    assert delta("chat_commands", "chat_commands_total", type="send", outcome="rate_limited") == 2
    assert delta("chat_commands", "chat_commands_total", type="invalid", outcome="bad_request") == 2
    assert delta("chat_socket_deliveries", "chat_socket_deliveries_total") >= 12  # 6 x 2 sockets
    assert delta("chat_events_delivered", "chat_events_delivered_total") >= 6
    assert delta("chat_sockets_opened", "chat_sockets_opened_total") == 2
    assert delta("chat_sockets_closed", "chat_sockets_closed_total", code="1000") == 2
    for family, moved in (("chat_ack_latency_seconds", 6), ("chat_fanout_latency_seconds", 6)):
        assert after[family][0] == "histogram"
        assert hist_count(after, family) - hist_count(before, family) >= moved, family
        inf = value(after, family, f"{family}_bucket", le="+Inf")
        assert inf == hist_count(after, family)
        assert value(after, family, f"{family}_sum") > 0
    # A local append and write take milliseconds: the fan-out is well under a second here.
    fast = value(
        after, "chat_fanout_latency_seconds", "chat_fanout_latency_seconds_bucket", le="1.0"
    )
    assert fast == hist_count(after, "chat_fanout_latency_seconds")
    assert after["chat_connections"][0] == "gauge"
    assert value(after, "chat_rooms_owned", "chat_rooms_owned") >= 1
    assert after["chat_redis_errors"][0] == "counter"
    components = {dict(k)["component"] for k in after["chat_redis_errors"][1]}
    assert components == {"pubsub", "membership", "room_server", "delivery"}
    assert after["chat_slow_consumers_closed"][0] == "counter"
    for family in ("chat_pubsub_slot_moves", "chat_replica_waits", "chat_replica_shortfalls"):
        assert after[family][0] == "counter", family
    assert delta("chat_replica_waits", "chat_replica_waits_total") == 0  # MIN_REPLICAS 0
    # prometheus_client's default collectors are kept.
    assert after["process_resident_memory_bytes"][0] == "gauge"
    assert after["python_gc_objects_collected"][0] == "counter"


async def test_handoffs_and_takeovers_are_timed(cluster: Cluster, node: Node) -> None:
    # Every room active on the first node, then a second node joins (the rooms that prefer it
    # are handed to it), then it is killed (the first node takes them back over).
    for slug in ROOMS:
        client = ChatClient(node.ws, slug, "carol")
        await client.connect()
        await client.send("activate")
        await client.wait_for(lambda c=client: len(c.acks) == 1)  # type: ignore[misc]
        await client.close()
    before = scrape(node)
    other = cluster.add("metrics-b")
    family = "chat_room_handoff_duration_seconds"
    after = await wait_until(node, lambda s: hist_count(s, family) > hist_count(before, family))
    moved = hist_count(after, family) - hist_count(before, family)
    handoffs = value(after, "chat_room_handoffs", "chat_room_handoffs_total") - value(
        before, "chat_room_handoffs", "chat_room_handoffs_total"
    )
    assert moved >= 1 and handoffs >= 1
    assert after[family][0] == "histogram"

    other.kill()
    family = "chat_room_takeover_duration_seconds"
    after = await wait_until(node, lambda s: hist_count(s, family) > hist_count(before, family))
    assert value(after, "chat_room_takeovers", "chat_room_takeovers_total") >= 1
    assert value(after, family, f"{family}_bucket", le="+Inf") == hist_count(after, family)


async def wait_until(node: Node, done: object, timeout: float = 20.0) -> Scrape:
    deadline = time.monotonic() + timeout
    scraped = scrape(node)
    while not done(scraped):  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout}s; node log:\n{node.log()}")
        await asyncio.sleep(0.2)
        scraped = scrape(node)
    return scraped


def test_the_dashboard_graphs_only_metrics_a_node_exposes(node: Node) -> None:
    exposed = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    for family, (kind, samples) in scrape(node).items():
        # A labelled counter with no sample yet still declares its family.
        exposed.add(family)
        exposed.update(family + suffix for suffix in suffixes.get(kind, ()))
        exposed.update(dict(key)["__name__"] for key in samples)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    used = {m for e in exprs for m in re.findall(r"\b((?:chat|process|python)_[a-z_]+)", e)}
    missing = sorted(used - exposed)
    assert not missing, f"the dashboard queries metrics no node exposes: {missing}"
