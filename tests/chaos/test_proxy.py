"""The proxy does what faults need: passes, slows, resets, black-holes, and heals."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from tests.chaos.proxy import RedisProxy
from tests.chaos.world import RedisProcess


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[RedisProcess, RedisProxy]]:
    server = RedisProcess(tmp_path / "redis").start()
    proxy = RedisProxy(server.port).start()
    try:
        yield server, proxy
    finally:
        proxy.stop()
        server.kill()


def client(proxy: RedisProxy, timeout: float = 2.0) -> redis_sync.Redis:
    return redis_sync.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=timeout)


def test_pass_slow_reset_blackhole(proxied: tuple[RedisProcess, RedisProxy]) -> None:
    _, proxy = proxied
    c = client(proxy)
    assert c.set("k", "v") and c.get("k") == b"v"

    proxy.slow(0.2)
    start = time.monotonic()
    c.get("k")
    assert time.monotonic() - start >= 0.35  # both directions wait
    proxy.pass_through()

    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    raw.sendall(b"PING\r\n")
    assert raw.recv(16) == b"+PONG\r\n"
    assert proxy.reset() >= 2
    try:
        assert raw.recv(16) == b""  # the open connection was cut
    except ConnectionResetError:
        pass
    raw.close()
    assert client(proxy).get("k") == b"v"  # new connections pass

    proxy.blackhole()
    held = client(proxy, timeout=0.5)
    with pytest.raises(redis_sync.TimeoutError):
        held.get("k")  # accepted, never answered
    assert proxy.connections >= 1
    proxy.pass_through()
    assert client(proxy).get("k") == b"v"


def test_upstream_moves(proxied: tuple[RedisProcess, RedisProxy], tmp_path: Path) -> None:
    _, proxy = proxied
    other = RedisProcess(tmp_path / "other").start()
    try:
        other.client().set("where", "other")
        proxy.set_upstream(other.port)
        proxy.reset()
        assert client(proxy).get("where") == b"other"
    finally:
        other.kill()


def test_stops_while_black_holed(proxied: tuple[RedisProcess, RedisProxy]) -> None:
    _, proxy = proxied
    proxy.blackhole()
    held = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    held.sendall(b"PING\r\n")
    time.sleep(0.1)
    start = time.monotonic()
    proxy.stop()
    assert time.monotonic() - start < 3
    try:
        assert held.recv(16) == b""
    except ConnectionResetError:
        pass
    held.close()
