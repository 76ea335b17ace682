"""REDIS_URL forms: plain, and Sentinel against a real sentinel process; malformed ones."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cluster.commands import Command
from cluster.config import ClusterConfig
from cluster.connection import (
    async_redis,
    parse_cluster_url,
    parse_sentinel_url,
    sync_redis,
)
from cluster.embedded import EmbeddedRedis, free_port, redis_server_binary
from cluster.runtime import ClusterRuntime


def test_parse_sentinel_url() -> None:
    target = parse_sentinel_url(
        "rediss+sentinel://:s3cret@h1:26379,[::1]:26380/mymaster/2"
        "?sentinel_password=sp&ssl_ca_certs=/ca.pem"
    )
    assert target.sentinels == [("h1", 26379), ("::1", 26380)]
    assert (target.master, target.db, target.password) == ("mymaster", 2, "s3cret")
    assert target.sentinel_password == "sp" and target.tls
    assert target.tls_options == {"ssl_ca_certs": "/ca.pem"}
    plain = parse_sentinel_url("redis+sentinel://h:26379/m")
    assert (plain.db, plain.password, plain.tls) == (0, None, False)
    assert plain.username is None


def test_parse_sentinel_url_keeps_the_acl_user() -> None:
    target = parse_sentinel_url(
        "redis+sentinel://chat%40app:p%3Ass@h:26379/m?sentinel_username=mon&sentinel_password=sp"
    )
    assert (target.username, target.password) == ("chat@app", "p:ss")
    assert (target.sentinel_username, target.sentinel_password) == ("mon", "sp")
    assert parse_sentinel_url("redis+sentinel://chat@h:26379/m").username == "chat"


def test_parse_cluster_url() -> None:
    target = parse_cluster_url("redis+cluster://h1:7000,[::1]:7001,h3:7002/")
    assert target.nodes == [("h1", 7000), ("::1", 7001), ("h3", 7002)]
    assert (target.username, target.password, target.tls) == (None, None, False)
    assert parse_cluster_url("redis+cluster://h1:7000").nodes == [("h1", 7000)]
    assert parse_cluster_url("redis+cluster://h1:7000/0").nodes == [("h1", 7000)]
    acl = parse_cluster_url("redis+cluster://chat:s%40cret@h1:7000,h2:7001/")
    assert (acl.username, acl.password) == ("chat", "s@cret")
    assert parse_cluster_url("redis+cluster://:pw@h1:7000/").username is None
    tls = parse_cluster_url(
        "rediss+cluster://u:p@h1:7000/?ssl_ca_certs=/ca.pem&ssl_check_hostname=false"
        "&ssl_cert_reqs=required"
    )
    assert tls.tls and (tls.username, tls.password) == ("u", "p")
    assert tls.tls_options == {
        "ssl_ca_certs": "/ca.pem",
        "ssl_check_hostname": False,
        "ssl_cert_reqs": "required",
    }


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis://h:6379/0", "not a Redis Cluster URL"),
        ("redis+sentinel://h:26379/m", "not a Redis Cluster URL"),
        ("redis+cluster://", "at least one host:port"),
        ("redis+cluster:///", "at least one host:port"),
        ("redis+cluster://h1/", "must be host:port"),
        ("redis+cluster://h1:port/", "must be host:port"),
        ("redis+cluster://h1:7000,,h2:7001/", "must be host:port"),
        ("redis+cluster://h1:7000,h2/", "must be host:port"),
        ("redis+cluster://h1:0/", "must be host:port"),
        ("redis+cluster://h1:70000/", "must be host:port"),
        ("redis+cluster://h1:7000/1", "only database 0"),
        ("redis+cluster://h1:7000/mymaster", "only database 0"),
        ("redis+cluster://h1:7000/0/1", "only database 0"),
        ("redis+cluster://h1:7000/?db=1", "unknown Redis Cluster URL option 'db'"),
        ("redis+cluster://h1:7000/?ssl_ca_certs=/ca.pem", "needs TLS"),
        ("rediss+cluster://h1:7000/?ssl_check_hostname=maybe", "must be true or false"),
        ("rediss+cluster://h1:7000/?ssl_bogus=1", "unknown Redis Cluster URL option"),
        ("redis+cluster://h1:7000/#frag", "no fragment"),
    ],
)
def test_malformed_cluster_urls_are_refused(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse_cluster_url(url)


def test_malformed_cluster_url_is_refused_by_the_client_factories() -> None:
    with pytest.raises(ValueError, match="only database 0"):
        async_redis("redis+cluster://127.0.0.1:7000/3")
    with pytest.raises(ValueError, match="must be host:port"):
        sync_redis("redis+cluster://127.0.0.1/")


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:6379/0",
        "redis+sentinel://h:26379",
        "redis+sentinel://h:26379/",
        "redis+sentinel://h/m",
        "redis+sentinel://h:port/m",
        "redis+sentinel://h:26379/m/x",
        "redis+sentinel://h:26379/m/0/extra",
    ],
)
def test_malformed_sentinel_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_sentinel_url(url)


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[str]:
    master = EmbeddedRedis.start(tmp_path / "master", appendonly=False)
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor chatmaster 127.0.0.1 {master.port} 1\n"
    )
    process = subprocess.Popen(
        [redis_server_binary(), str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        probe = redis.Redis(port=port, decode_responses=True, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                if probe.execute_command("SENTINEL", "get-master-addr-by-name", "chatmaster"):
                    break
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "sentinel did not start"
            time.sleep(0.05)
        probe.close()
        yield f"redis+sentinel://127.0.0.1:{port}/chatmaster/0"
    finally:
        process.terminate()
        process.wait(10)
        master.stop()


def test_sync_client_through_sentinel(sentinel: str) -> None:
    client = sync_redis(sentinel)
    client.set("k", "v")
    assert client.get("k") == "v"
    client.close()


@pytest.mark.asyncio
async def test_sentinel_url_authenticates_as_its_acl_user(sentinel: str) -> None:
    admin = sync_redis(sentinel)
    admin.execute_command("ACL", "SETUSER", "chatapp", "on", ">app-pw", "~*", "&*", "+@all")
    admin.close()
    with_user = sentinel.replace("redis+sentinel://", "redis+sentinel://chatapp:app-pw@")
    client = sync_redis(with_user)
    assert client.execute_command("ACL WHOAMI") == "chatapp"
    client.close()
    aclient = async_redis(with_user)
    assert await aclient.execute_command("ACL WHOAMI") == "chatapp"
    await aclient.aclose()
    wrong = sentinel.replace("redis+sentinel://", "redis+sentinel://chatapp:wrong@")
    with pytest.raises(redis.AuthenticationError):
        sync_redis(wrong).ping()


@pytest.mark.asyncio
async def test_runtime_runs_through_sentinel(sentinel: str) -> None:
    probe = async_redis(sentinel)
    assert await probe.ping()
    await probe.aclose()
    runtime = ClusterRuntime(ClusterConfig("s1"), sentinel)
    await runtime.start()
    try:
        ack = await runtime.submit("room", Command("send", "u", "c1", body="via sentinel"))
        assert ack.seq == 1
        assert runtime.ready
    finally:
        await runtime.stop()


def test_embedded_redis_dies_with_its_parent(tmp_path: Path) -> None:
    """A node killed with SIGKILL must not leave its embedded Redis running."""
    import os
    import signal
    import sys

    script = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from cluster.embedded import EmbeddedRedis;"
        "r = EmbeddedRedis.start(sys.argv[2], appendonly=False);"
        "print(r.process.pid, flush=True); time.sleep(60)"
    )
    root = str(Path(__file__).resolve().parents[2])
    parent = subprocess.Popen(
        [sys.executable, "-c", script, root, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 10
    while True:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as stat:
            if stat.read().split()[2] == "Z":  # exited, waiting to be reaped by init
                break
        assert time.monotonic() < deadline, "the embedded Redis outlived its parent"
        time.sleep(0.05)
