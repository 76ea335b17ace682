"""The lean hot-path connection (cluster/fastlane.py) against real redis-server processes:
pipelined replies reach the right callers, errors are redis-py's, and a restarted, hung or
failed-over server is followed."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import redis
import redis.asyncio

from cluster.connection import async_redis
from cluster.embedded import EmbeddedRedis, free_port
from cluster.fastlane import FastLane
from tests.cluster.test_connection import sentinel  # noqa: F401  (a fixture)

pytestmark = pytest.mark.asyncio


@pytest.fixture
def own_redis(tmp_path: Path):
    server = EmbeddedRedis.start(tmp_path / "r", appendonly=False)
    yield server
    if server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


def lane_for(url: str) -> tuple[FastLane, redis.asyncio.Redis]:
    client = async_redis(url)
    lane = FastLane.for_client(client)
    assert lane is not None
    return lane, client


async def test_concurrent_commands_get_their_own_replies(redis_url: str) -> None:
    lane, client = lane_for(redis_url)
    try:
        replies = await asyncio.gather(*(lane.execute("INCR", "counter") for _ in range(500)))
        assert replies == list(range(1, 501))  # written in order, answered in order
        assert await lane.execute("SET", "k", "é") == "OK"
        assert await client.get("k") == "é"
        assert await lane.publish("nobody-listens", "x") == 0
        assert lane.connects == 1  # one connection for all of it
    finally:
        await lane.close()
        await client.aclose()


async def test_error_replies_are_redis_py_errors_and_keep_the_order(redis_url: str) -> None:
    lane, client = lane_for(redis_url)
    try:
        await lane.execute("SET", "text", "abc")
        results = await asyncio.gather(
            lane.execute("INCR", "text"), lane.execute("GET", "text"), return_exceptions=True
        )
        assert isinstance(results[0], redis.exceptions.ResponseError)
        assert results[1] == "abc"
        with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
            await lane.execute("NO-SUCH-COMMAND")
    finally:
        await lane.close()
        await client.aclose()


async def test_a_script_loads_itself_again_after_the_server_forgets_it(redis_url: str) -> None:
    lane, client = lane_for(redis_url)
    script = lane.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    try:
        assert await script(keys=["n"], args=[2]) == 2
        await client.script_flush()
        assert await script(keys=["n"], args=[3]) == 5
    finally:
        await lane.close()
        await client.aclose()


async def test_a_caller_that_gives_up_does_not_shift_the_replies(redis_url: str) -> None:
    lane, client = lane_for(redis_url)
    try:
        await lane.execute("SET", "a", "1")
        slow = asyncio.ensure_future(lane.execute("GET", "a"))
        slow.cancel()
        assert await lane.execute("SET", "b", "2") == "OK"
        assert await lane.execute("GET", "b") == "2"
        assert slow.cancelled()
    finally:
        await lane.close()
        await client.aclose()


async def test_a_restarted_server_is_reconnected(own_redis: EmbeddedRedis) -> None:
    lane, client = lane_for(own_redis.url)
    try:
        assert await lane.execute("SET", "x", "1") == "OK"
        own_redis.stop()
        with pytest.raises(redis.exceptions.ConnectionError):
            await asyncio.wait_for(lane.execute("GET", "x"), 5)
        restarted = EmbeddedRedis.start(own_redis.data_dir, port=own_redis.port, appendonly=False)
        try:
            assert await asyncio.wait_for(lane.execute("SET", "x", "2"), 5) == "OK"
            assert lane.connects == 2
        finally:
            restarted.stop()
    finally:
        await lane.close()
        await client.aclose()


async def test_a_hung_server_fails_the_call_after_the_timeout(own_redis: EmbeddedRedis) -> None:
    client = redis.asyncio.Redis(port=own_redis.port, decode_responses=True, socket_timeout=0.5)
    lane = FastLane.for_client(client)
    assert lane is not None
    try:
        assert await lane.execute("PING") == "PONG"
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        started = asyncio.get_running_loop().time()
        with pytest.raises(redis.exceptions.TimeoutError):
            await asyncio.wait_for(lane.execute("PING"), 5)
        assert asyncio.get_running_loop().time() - started < 2.0
        os.kill(own_redis.process.pid, signal.SIGCONT)
        assert await asyncio.wait_for(lane.execute("PING"), 5) == "PONG"
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
        await lane.close()
        await client.aclose()


async def test_password_user_and_database_come_from_the_client(tmp_path: Path) -> None:
    server = EmbeddedRedis.start(tmp_path / "auth", appendonly=False)
    admin = redis.Redis(port=server.port, decode_responses=True)
    admin.execute_command("ACL", "SETUSER", "chat", "on", ">s3cret", "~*", "&*", "+@all")
    admin.config_set("requirepass", "rootpw")
    admin.close()
    lane, client = lane_for(f"redis://chat:s3cret@127.0.0.1:{server.port}/3")
    try:
        assert await lane.execute("SET", "where", "db3") == "OK"
        assert await client.get("where") == "db3"  # the same database as redis-py's
        assert await lane.execute("ACL", "WHOAMI") == "chat"
    finally:
        await lane.close()
        await client.aclose()
        server.stop()


async def test_a_wrong_password_is_an_error_not_a_hang(own_redis: EmbeddedRedis) -> None:
    admin = redis.Redis(port=own_redis.port, decode_responses=True)
    admin.config_set("requirepass", "right")
    admin.close()
    lane, client = lane_for(f"redis://:wrong@127.0.0.1:{own_redis.port}/0")
    try:
        with pytest.raises(redis.exceptions.ResponseError):
            await asyncio.wait_for(lane.execute("PING"), 5)
        # The refused connection was closed, not left open: only the counting one remains.
        counter = redis.Redis(port=own_redis.port, password="right", decode_responses=True)
        deadline = asyncio.get_running_loop().time() + 5
        while int(counter.info("clients")["connected_clients"]) != 1:
            assert asyncio.get_running_loop().time() < deadline, "the connection stayed open"
            await asyncio.sleep(0.05)
        counter.close()
    finally:
        await lane.close()
        await client.aclose()


async def test_nothing_listening_is_a_connection_error() -> None:
    lane, client = lane_for(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await asyncio.wait_for(lane.execute("PING"), 5)
    finally:
        await lane.close()
        await client.aclose()


async def test_clients_the_lane_cannot_follow_get_none() -> None:
    tls = async_redis("rediss://127.0.0.1:6380/0")
    assert FastLane.for_client(tls) is None
    assert FastLane.for_client(object()) is None
    await tls.aclose()


async def test_through_sentinel_the_lane_talks_to_the_master(sentinel: str) -> None:  # noqa: F811
    lane, client = lane_for(sentinel)
    try:
        assert await lane.execute("SET", "via", "sentinel") == "OK"
        assert await client.get("via") == "sentinel"
        assert (await lane.execute("ROLE"))[0] == "master"
    finally:
        await lane.close()
        await client.aclose()


async def test_the_runtime_appends_through_the_lane(redis_url: str) -> None:
    from cluster.commands import Command
    from cluster.config import ClusterConfig
    from cluster.runtime import ClusterRuntime

    runtime = ClusterRuntime(ClusterConfig("lane-node", lease_ttl_ms=1500), redis_url)
    await runtime.start()
    try:
        assert runtime.fast is not None
        ack = await runtime.submit("lane-room", Command("send", "u", "c1", body="hello"))
        again = await runtime.submit("lane-room", Command("send", "u", "c1", body="hello"))
        assert (ack.seq, again.seq, again.duplicate) == (1, 1, True)
        assert runtime.fast.connects == 1
    finally:
        await runtime.stop()


# -- the lean PubSub -------------------------------------------------------------------------


async def next_of_type(pubsub, kind: str, timeout: float = 5.0) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == kind:
                return message


async def test_lean_pubsub_receives_what_is_published(redis_url: str) -> None:
    from cluster.fastlane import LeanPubSub

    client = async_redis(redis_url)
    pubsub = LeanPubSub.for_client(client)
    assert pubsub is not None
    try:
        await pubsub.subscribe("room-a", "room-b")
        confirmed = [await next_of_type(pubsub, "subscribe") for _ in range(2)]
        assert [m["channel"] for m in confirmed] == ["room-a", "room-b"]
        for n in range(100):
            await client.publish("room-a" if n % 2 else "room-b", f"E{n} é")
        got = [await next_of_type(pubsub, "message") for _ in range(100)]
        assert [m["data"] for m in got] == [f"E{n} é" for n in range(100)]  # in order
        assert {m["channel"] for m in got} == {"room-a", "room-b"}
        await pubsub.ping()
        assert (await next_of_type(pubsub, "pong"))["type"] == "pong"
        await pubsub.unsubscribe("room-b")
        await next_of_type(pubsub, "unsubscribe")
        assert await client.publish("room-b", "unheard") == 0
        assert await pubsub.get_message(timeout=0.05) is None  # a quiet wait ends
        assert pubsub.connection_pool.connection_kwargs["host"] == "127.0.0.1"
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_lean_pubsub_raises_when_the_server_goes(own_redis: EmbeddedRedis) -> None:
    from cluster.fastlane import LeanPubSub

    client = async_redis(own_redis.url)
    pubsub = LeanPubSub.for_client(client)
    assert pubsub is not None
    try:
        await pubsub.subscribe("c")
        await next_of_type(pubsub, "subscribe")
        own_redis.stop()
        with pytest.raises(redis.exceptions.ConnectionError):
            async with asyncio.timeout(5):
                while True:  # never a silent reconnect: the hub must learn of the loss
                    await pubsub.get_message(timeout=1.0)
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_lean_pubsub_logs_in_and_reports_refusals(tmp_path: Path) -> None:
    from cluster.fastlane import LeanPubSub

    server = EmbeddedRedis.start(tmp_path / "auth", appendonly=False)
    admin = redis.Redis(port=server.port, decode_responses=True)
    admin.config_set("requirepass", "right")
    admin.close()
    good = async_redis(f"redis://:right@127.0.0.1:{server.port}/2")
    bad = async_redis(f"redis://:wrong@127.0.0.1:{server.port}/0")
    lean_good, lean_bad = LeanPubSub.for_client(good), LeanPubSub.for_client(bad)
    assert lean_good is not None and lean_bad is not None
    try:
        await lean_good.subscribe("x")
        assert (await next_of_type(lean_good, "subscribe"))["channel"] == "x"
        with pytest.raises(redis.exceptions.ResponseError):
            await lean_bad.subscribe("x")
        await lean_good.execute_command("SUBSCRIBE")  # wrong arity: an error push
        with pytest.raises(redis.exceptions.ResponseError):
            async with asyncio.timeout(5):
                while True:
                    await lean_good.get_message(timeout=1.0)
    finally:
        await lean_good.aclose()
        await lean_bad.aclose()
        await good.aclose()
        await bad.aclose()
        server.stop()
