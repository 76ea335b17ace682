"""The cluster runtime on a real Redis Cluster (3 masters + 3 replicas on loopback).

Rooms spread over every shard, every Lua script runs on one slot (no CROSSSLOT), room events go
by sharded pub/sub on Redis 7 (classic on 6.2), and a shard fail-over or a slot migration under a
room costs its subscribers nothing: they fill what pub/sub lost from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis

from cluster.commands import Command
from cluster.config import ClusterConfig
from cluster.connection import async_redis, sync_redis
from cluster.crdt import LWWMap
from cluster.errors import NodeUnreachable, RpcTimeout
from cluster.keys import NODE_INFO, NODES, RoomKeys, node_key, node_rpc_channel
from cluster.publishing import PUBLISH, SPUBLISH, publish, room_publish_command
from cluster.runtime import ClusterRuntime
from cluster.state_store import StateStore
from tests.support.cluster_plugin import (  # noqa: F401
    needs_redis_7,
    redis_cluster,
    redis_cluster_session,
)
from tests.support.redis_cluster_topology import SYSTEM_REDIS_7, RedisClusterTopology
from tests.support.tab import Tab

Topology = RedisClusterTopology


def rooms_on_every_master(topology: Topology, count_per_master: int = 1) -> list[str]:
    """Room slugs whose keys land on each master in turn (found by hashing, not by luck)."""
    wanted: dict[int, list[str]] = {port: [] for port in topology.masters()}
    n = 0
    while any(len(slugs) < count_per_master for slugs in wanted.values()):
        slug = f"room{n}"
        n += 1
        master = topology.master_for_key(RoomKeys(slug).log)
        if len(wanted[master]) < count_per_master:
            wanted[master].append(slug)
    return [slug for slugs in wanted.values() for slug in slugs]


@contextlib.asynccontextmanager
async def runtime(url: str, name: str, **config: Any) -> AsyncIterator[ClusterRuntime]:
    config.setdefault("lease_ttl_ms", 1500)
    config.setdefault("rate_limit", (10_000, 1.0))
    rt = ClusterRuntime(ClusterConfig(name, **config), url)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


async def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for: {what}") from None


async def send(rt: ClusterRuntime, slug: str, body: str, user: str = "u") -> int:
    return (await rt.submit(slug, Command("send", user, body, body=body))).seq


# -- URLs against the real cluster ----------------------------------------------------------


def test_cluster_url_gives_cluster_clients(redis_cluster: Topology) -> None:  # noqa: F811
    client = sync_redis(redis_cluster.url)
    assert isinstance(client, redis.cluster.RedisCluster)
    for slug in ("a", "b", "c", "d"):
        client.set(RoomKeys(slug).seq, "1")
    assert len(client.get_primaries()) == 3
    client.close()


@pytest.mark.asyncio
async def test_cluster_url_with_acl_user(redis_cluster: Topology) -> None:  # noqa: F811
    for port in redis_cluster.live_ports():  # ACLs are per node in a Redis Cluster
        redis_cluster.client(port).execute_command(
            "ACL", "SETUSER", "chatapp", "on", ">pw", "~*", "&*", "+@all"
        )
    try:
        url = redis_cluster.url.replace("redis+cluster://", "redis+cluster://chatapp:pw@")
        client = async_redis(url)
        assert await client.execute_command("ACL WHOAMI") == "chatapp"
        await client.set(RoomKeys("acl").seq, "1")
        await client.aclose()
        wrong = async_redis(url.replace(":pw@", ":nope@"))
        # redis-py wraps the refusal while it discovers the cluster.
        with pytest.raises(
            (redis.RedisError, redis.exceptions.RedisClusterException),
            match="invalid username-password",
        ):
            await wrong.ping()
        with contextlib.suppress(Exception):
            await wrong.aclose()
        # With the default user off, every connection of the runtime (the cluster client's,
        # the hub's own links to shard masters) must log in as the URL's user.
        slug = rooms_on_every_master(redis_cluster)[0]
        as_app = {
            port: redis.Redis(port=port, username="chatapp", password="pw", decode_responses=True)
            for port in redis_cluster.live_ports()
        }
        for app in as_app.values():
            app.execute_command("ACL", "SETUSER", "default", "off")
        try:
            async with runtime(url, "a") as a, runtime(url, "b") as b:
                tab = Tab("reader")
                await b.attach(slug, tab)
                await send(a, slug, "as chatapp")
                await eventually(lambda: tab.seqs == [1], "delivered")
        finally:
            for app in as_app.values():
                app.execute_command("ACL", "SETUSER", "default", "on")
                app.close()
    finally:
        for port in redis_cluster.live_ports():
            redis_cluster.client(port).execute_command("ACL", "DELUSER", "chatapp")


# -- the runtime --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_two_runtimes_chat_across_every_shard(redis_cluster: Topology) -> None:  # noqa: F811
    slugs = rooms_on_every_master(redis_cluster)
    masters = {redis_cluster.master_for_key(RoomKeys(s).log) for s in slugs}
    assert len(masters) == 3, "the rooms must spread over all three masters"
    async with runtime(redis_cluster.url, "a") as a, runtime(redis_cluster.url, "b") as b:
        tabs = {slug: Tab(f"reader-{slug}") for slug in slugs}
        for slug, tab in tabs.items():
            await b.attach(slug, tab)
        for slug in slugs:
            for i in range(3):
                assert await send(a, slug, f"{slug}-{i}") == i + 1
        for slug, tab in tabs.items():
            await eventually(lambda t=tab: t.seqs == [1, 2, 3], f"{slug} delivered")
            assert [f["body"] for f in tab.frames if f.get("type") == "message"] == [
                f"{slug}-{i}" for i in range(3)
            ]
        # Each room's keys live on the master of its slot, all under one hash tag.
        for slug in slugs:
            master = redis_cluster.master_for_key(RoomKeys(slug).log)
            node = redis_cluster.client(master)
            assert node.xlen(RoomKeys(slug).log) == 3
            assert node.get(RoomKeys(slug).seq) == "3"
            assert node.hget(RoomKeys(slug).lease, "node") in ("a", "b")
        # Typing and presence reach the other node too.
        await a.typing(slugs[0], "writer")
        await eventually(
            lambda: any(f.get("type") == "typing" for f in tabs[slugs[0]].frames), "typing"
        )
        assert await a.online([slugs[1]]) == {slugs[1]: [f"reader-{slugs[1]}"]}
        # Membership sees both nodes: heartbeats, node info and RPC work across shards.
        assert sorted(a.membership.live) == ["a", "b"]
        assert await a.ask_all(slugs[0]) == [3, 3]


@pytest.mark.asyncio
async def test_every_script_runs_on_one_slot(redis_cluster: Topology) -> None:  # noqa: F811
    """Append (with dedupe, delete, state delta), claim, release, heartbeat, snapshot, seq floor
    and restore all run through the runtime on a cluster: a CROSSSLOT anywhere would raise."""
    slug = rooms_on_every_master(redis_cluster)[0]
    async with runtime(redis_cluster.url, "a") as a:
        ack = await a.submit(slug, Command("send", "u", "c1", body="hello"))
        again = await a.submit(slug, Command("send", "u", "c1", body="hello"))
        assert again.seq == ack.seq and again.duplicate  # dedupe
        await a.submit(slug, Command("edit", "u", "c2", body="hello!", id=ack.id))
        await a.submit(slug, Command("delete", "u", "c3", id=ack.id))
        assert await a.log.raise_seq_floor(slug, 100) >= 100
        lease = await a.registry.lookup(slug, fresh=True)
        assert lease is not None and lease.node == "a"
        store = StateStore(a.redis)
        assert await store.write_snapshot(
            slug, node="a", epoch=lease.epoch, state=LWWMap(), upto_seq=3
        )
        other = rooms_on_every_master(redis_cluster)[1]
        await send(a, other, "restore me")
        restored = await a.log.read(other, after=0, limit=10)
        client = sync_redis(redis_cluster.url)
        client.delete(RoomKeys(other).log)
        other_lease = await a.registry.lookup(other, fresh=True)
        assert other_lease is not None
        written = await a.log.restore(
            other, node="a", epoch=other_lease.epoch, restored=restored.events
        )
        assert written == 1
        page = await a.events(slug, after=0, limit=10)
        assert [e["type"] for e in page.events] == ["message", "edit", "delete"]
        await a.drain(timeout_s=5)  # releases every lease (RELEASE_LEASE)
        await a.stop()  # leaves: node keys and membership entries go
    assert client.hget(RoomKeys(slug).lease, "node") is None
    assert client.exists(node_key("a")) == 0
    assert "a" not in client.zrange(NODES, 0, -1)
    assert client.hget(NODE_INFO, "a") is None
    client.close()


@pytest.mark.asyncio
async def test_room_events_use_sharded_pubsub_on_7(redis_cluster: Topology) -> None:  # noqa: F811
    needs_redis_7(redis_cluster)
    slug = rooms_on_every_master(redis_cluster)[0]
    channel = RoomKeys(slug).channel
    master = redis_cluster.master_for_key(channel)
    async with runtime(redis_cluster.url, "a") as a:
        assert a.hub.sharded
        assert await room_publish_command(a.redis) == SPUBLISH
        tab = Tab("reader")
        await a.attach(slug, tab)
        numsub = redis_cluster.client(master).execute_command("PUBSUB", "SHARDNUMSUB", channel)
        assert numsub[1] == 1, numsub
        rpc = node_rpc_channel("a")
        rpc_master = redis_cluster.client(redis_cluster.master_for_key(rpc))
        assert rpc_master.execute_command("PUBSUB", "SHARDNUMSUB", rpc)[1] == 1
        # A classic subscriber to the room's channel hears nothing: events go by SPUBLISH.
        classic = redis_cluster.client(master).pubsub()
        classic.subscribe(channel)
        assert classic.get_message(timeout=1.0)["type"] == "subscribe"
        await send(a, slug, "sharded")
        await eventually(lambda: tab.seqs == [1], "delivered")
        assert classic.get_message(timeout=0.5) is None
        classic.close()


@pytest.mark.asyncio
async def test_room_events_use_classic_pubsub_on_6_2(redis_cluster: Topology) -> None:  # noqa: F811
    if redis_cluster.version >= (7, 0, 0):
        pytest.skip("a 6.2 cluster's fallback: run with TEST_REDIS_CLUSTER_BINARY=<6.2 binary>")
    slug = rooms_on_every_master(redis_cluster)[0]
    async with runtime(redis_cluster.url, "a") as a, runtime(redis_cluster.url, "b") as b:
        assert not a.hub.sharded and await room_publish_command(a.redis) == PUBLISH
        tab = Tab("reader")
        await b.attach(slug, tab)
        await send(a, slug, "classic")
        await eventually(lambda: tab.seqs == [1], "delivered")


# -- faults under a room -----------------------------------------------------------------------


async def send_until_acked(
    rt: ClusterRuntime, slug: str, client_id: str, timeout: float = 15.0
) -> int:
    """Send one message, re-sending with the same client_id (deduped) until it is acked."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                ack = await rt.submit(slug, Command("send", "writer", client_id, body=client_id))
                return ack.seq
            except Exception:
                await asyncio.sleep(0.05)


async def acked_through(
    a: ClusterRuntime,
    tab: Tab,
    slug: str,
    fault: Callable[[], Awaitable[None]],
    *,
    pause_s: float,
) -> list[int]:
    """Send to ``slug`` on ``a`` before, during and after ``fault`` (a writer keeps sending,
    one message per ``pause_s``, while it runs); then check that ``tab``, a socket on another
    node, got every acked event, in order, each once: what pub/sub lost meanwhile is filled
    from the log. Returns the acked seqs."""
    acked = [await send_until_acked(a, slug, f"before-{i}") for i in range(5)]
    await eventually(lambda: tab.seqs == acked, "delivered before the fault")

    async def writer(stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            acked.append(await send_until_acked(a, slug, f"during-{n}"))
            n += 1
            await asyncio.sleep(pause_s)

    stop = asyncio.Event()
    writing = asyncio.create_task(writer(stop))
    await fault()
    for i in range(5):
        acked.append(await send_until_acked(a, slug, f"after-{i}"))
    stop.set()
    await writing
    await eventually(lambda: tab.seqs[-1:] == [max(acked)], "delivered after", timeout=15)
    assert tab.seqs == sorted(set(tab.seqs))
    assert set(acked) <= set(tab.seqs), sorted(set(acked) - set(tab.seqs))
    return acked


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["sigkill", "manual"])
async def test_shard_fail_over_under_a_room_loses_no_acked_event(
    redis_cluster: Topology,  # noqa: F811
    how: str,
) -> None:
    """SIGKILL of the room's master (its replica takes over after the node timeout), or a
    graceful CLUSTER FAILOVER (the old master turns replica, still up)."""
    slug = next(
        s
        for s in rooms_on_every_master(redis_cluster)
        if redis_cluster.master_for_key(RoomKeys(s).log) != redis_cluster.master_for_key(NODES)
    )
    master = redis_cluster.master_for_key(RoomKeys(slug).log)
    async with (
        runtime(redis_cluster.url, "a", lease_ttl_ms=3000) as a,
        runtime(redis_cluster.url, "b", lease_ttl_ms=3000) as b,
    ):
        tab = Tab("reader")
        await b.attach(slug, tab)
        fail_over = redis_cluster.kill_master if how == "sigkill" else redis_cluster.failover

        async def shard_fails_over() -> None:
            promoted = await asyncio.to_thread(fail_over, master)
            assert redis_cluster.master_for_key(RoomKeys(slug).log) == promoted

        await acked_through(a, tab, slug, shard_fails_over, pause_s=0.02)
        if b.hub.sharded and how == "sigkill":
            assert b.hub.reconnects >= 1  # the dead master's shard link was placed again
        if b.hub.sharded and how == "manual":
            # The old master, turned replica, dropped the room's subscription (sunsubscribe):
            # the hub subscribed it again on the new master.
            assert b.hub.slot_moves >= 1


@pytest.mark.asyncio
async def test_slot_migration_under_a_room_loses_no_acked_event(
    redis_cluster: Topology,  # noqa: F811
) -> None:
    slug = rooms_on_every_master(redis_cluster)[0]
    slot = redis_cluster.key_slot(RoomKeys(slug).log)
    source = redis_cluster.master_for_slot(slot)
    target = next(p for p in redis_cluster.masters() if p != source)
    async with (
        runtime(redis_cluster.url, "a", lease_ttl_ms=3000) as a,
        runtime(redis_cluster.url, "b", lease_ttl_ms=3000) as b,
    ):
        tab = Tab("reader")
        await b.attach(slug, tab)

        async def slot_migrates() -> None:
            await asyncio.to_thread(redis_cluster.migrate_slot, slot, target)
            assert redis_cluster.master_for_key(RoomKeys(slug).log) == target

        acked = await acked_through(a, tab, slug, slot_migrates, pause_s=0.01)
        assert redis_cluster.client(target).xlen(RoomKeys(slug).log) == len(set(acked))
        if b.hub.sharded:
            # Redis 7 dropped the room's shard subscription when the slot left its master
            # (sunsubscribe); the hub subscribed it again on the new master.
            assert b.hub.slot_moves >= 1
            numsub = redis_cluster.client(target).execute_command(
                "PUBSUB", "SHARDNUMSUB", RoomKeys(slug).channel
            )
            assert numsub[1] == 1
    # Give the slot back: the session's later tests expect the layout they started with.
    await asyncio.to_thread(redis_cluster.migrate_slot, slot, source)


@pytest.mark.asyncio
async def test_admin_operations_work_on_a_cluster(
    redis_cluster: Topology,  # noqa: F811
    settings: Any,
) -> None:
    """rooms/redis_admin.py (the admin, management commands) through the sync cluster client:
    room-scoped MULTI (purge), a SCAN of every master (forget), pipelines over shards."""
    from rooms import redis_admin

    settings.CHAT_REDIS_URL = redis_cluster.url
    slugs = rooms_on_every_master(redis_cluster)
    async with runtime(redis_cluster.url, "a") as a:
        for slug in slugs:
            for i in range(2):
                await a.submit(slug, Command("send", "u", f"{slug}-{i}", body="x"))
        stats = await asyncio.to_thread(redis_admin.room_stats, slugs)
        assert {slug: (s.messages, s.owner, s.last_seq) for slug, s in stats.items()} == {
            slug: (2, "a", 2) for slug in slugs
        }
        doomed, kept = slugs[0], slugs[1]
        await asyncio.to_thread(redis_admin.room_close, kept)
        assert sync_redis(redis_cluster.url).exists(RoomKeys(kept).closed)
        await asyncio.to_thread(redis_admin.room_reopen, kept)
        assert await asyncio.to_thread(redis_admin.room_high_water, kept) == 2
        assert await asyncio.to_thread(redis_admin.room_purge, kept) == 2
        await asyncio.to_thread(redis_admin.room_forget, doomed)
        client = sync_redis(redis_cluster.url)
        leftovers = [
            key
            for port in redis_cluster.masters()
            for key in redis_cluster.client(port).scan_iter(match=f"{RoomKeys(doomed).tag}:*")
        ]
        # Only the epoch counter (fencing epochs only grow) and the closed flag stay.
        assert sorted(leftovers) == sorted([RoomKeys(doomed).epoch, RoomKeys(doomed).closed])
        assert client.xlen(RoomKeys(kept).log) == 0
        client.close()
        assert await asyncio.to_thread(redis_admin.room_move, slugs[2]) >= 0


@pytest.mark.asyncio
async def test_classic_link_moves_on_when_its_node_dies(redis_cluster: Topology) -> None:  # noqa: F811
    """Announcements (and, on 6.2, room events) ride the classic link to one node; when that
    node dies the link moves to another and the rooms fill what they missed."""
    slug = rooms_on_every_master(redis_cluster)[0]
    async with (
        runtime(redis_cluster.url, "a", lease_ttl_ms=3000) as a,
        runtime(redis_cluster.url, "b", lease_ttl_ms=3000) as b,
    ):
        tab = Tab("reader")
        await b.attach(slug, tab)
        heard: list[str] = []
        await b.hub.subscribe("chat:test:probe", heard.append)
        await send_until_acked(a, slug, "before")
        classic = b.hub.classic_node
        assert classic is not None
        port = int(classic.rsplit(":", 1)[1])
        reconnects = b.hub.reconnects
        await asyncio.to_thread(redis_cluster.kill_master, port)
        await eventually(lambda: b.hub.reconnects > reconnects, "classic link back", 15)
        assert b.hub.classic_node not in (None, classic)
        acked = [await send_until_acked(a, slug, f"after-{i}") for i in range(3)]
        await eventually(lambda: tab.seqs[-1:] == acked[-1:], "delivered after", timeout=15)
        assert tab.seqs == list(range(1, acked[-1] + 1))
        await publish(a.redis, "chat:test:probe", "hello")  # RedisCluster has no .publish
        await eventually(lambda: heard == ["hello"], "announcement heard")


def _tls_cluster_possible() -> bool:
    return os.path.exists(SYSTEM_REDIS_7) and shutil.which("openssl") is not None


@pytest.mark.asyncio
async def test_runtime_on_a_tls_cluster() -> None:
    """``rediss+cluster://?ssl_ca_certs=``: the cluster client and the hub's own links to shard
    masters all speak TLS (the nodes have no plain port at all)."""
    if not _tls_cluster_possible():
        pytest.skip("needs /usr/bin/redis-server (built with TLS) and the openssl CLI")
    with RedisClusterTopology.start(
        masters=3, replicas_per_master=0, tls=True, binary=SYSTEM_REDIS_7
    ) as topology:
        url = topology.url
        assert url.startswith("rediss+cluster://") and "ssl_ca_certs=" in url
        slugs = rooms_on_every_master(topology)
        async with runtime(url, "a") as a, runtime(url, "b") as b:
            tabs = {slug: Tab("reader") for slug in slugs}
            for slug, tab in tabs.items():
                await b.attach(slug, tab)
            for slug in slugs:
                await send(a, slug, "over tls")
            for tab in tabs.values():
                await eventually(lambda t=tab: t.seqs == [1], "delivered over TLS")
            assert a.hub.classic_node is not None
            if b.hub.sharded:
                assert len(b.hub.shard_nodes) == 3


@pytest.mark.asyncio
async def test_rpc_to_a_node_nobody_runs(redis_cluster: Topology) -> None:  # noqa: F811
    """On 7 a node's inbox is sharded, so SPUBLISH's answer counts its listeners: a request to
    nobody fails at once. On 6.2 a classic PUBLISH's answer counts one node's subscribers only:
    zero proves nothing, the request ends by its timeout."""
    async with runtime(redis_cluster.url, "a") as a, runtime(redis_cluster.url, "b") as b:
        assert await a.rpc.call("b", "known_seq", {"room": "r"}, timeout=2.0) == {"seq": 0}
        started = asyncio.get_running_loop().time()
        if a.hub.sharded:
            with pytest.raises(NodeUnreachable):
                await a.rpc.call("ghost", "known_seq", {"room": "r"}, timeout=2.0)
            assert asyncio.get_running_loop().time() - started < 1.0
        else:
            with pytest.raises(RpcTimeout):
                await a.rpc.call("ghost", "known_seq", {"room": "r"}, timeout=0.3)
        assert b.hub.connected.is_set()


@pytest.mark.asyncio
async def test_script_call_survives_a_slot_routed_to_a_node_listed_as_replica(
    redis_cluster: Topology,  # noqa: F811
) -> None:
    """What concurrent MOVED answers after a fail-over can leave in redis-py's slot map: the
    slot routed to its master, that master listed as a replica, and its script cache empty
    (it was a replica). redis-py's own retry loads the script on the "primaries" only and
    fails with NOSCRIPT for good; ours loads it where the slot is routed."""
    client = async_redis(redis_cluster.url)
    try:
        script = client.register_script("return redis.call('INCR', KEYS[1])")
        key = RoomKeys("scripted").seq
        assert await script(keys=[key]) == 1
        node = client.get_node_from_key(key)
        node.server_type = "replica"  # the bug's aftermath
        redis_cluster.client(int(node.port)).execute_command("SCRIPT", "FLUSH")
        assert await script(keys=[key]) == 2
    finally:
        await client.aclose()
