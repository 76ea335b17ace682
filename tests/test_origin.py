"""The socket's Origin rule (issue 9 item 6), against a real ``runnode``: raw handshakes with
chosen ``Origin`` and ``Host`` headers. Allowed: no Origin (scripts), the page's own origin on a
host in ALLOWED_HOSTS (same scheme and port), and CSRF_TRUSTED_ORIGINS as written there.
Refused with HTTP 403: everything else, including a rebound DNS name whose Host equals its
Origin, and another port or scheme of an allowed host.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import override_settings

from chatsite.origin import HandshakeRequest, origin_allowed
from tests.support.nodes import Cluster, Node

TRUSTED = "https://chat.example.com,https://*.example.org"


@pytest.fixture(scope="module")
def node(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    data_dir = Path(tmp_path_factory.mktemp("origin"))
    cluster = Cluster(redis_server, data_dir, DJANGO_CSRF_TRUSTED_ORIGINS=TRUSTED)
    cluster.create_room("lobby")
    try:
        yield cluster.add("origin")
    finally:
        cluster.close()


def handshake(node: Node, origin: str | None, host: str | None = None) -> int:
    """The HTTP status of a WebSocket handshake (101: upgraded)."""
    lines = [
        "GET /ws/rooms/lobby/?name=probe HTTP/1.1",
        f"Host: {host or f'127.0.0.1:{node.port}'}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        status_line = conn.makefile("rb").readline().decode("latin-1")
    return int(status_line.split()[1])


def test_clients_without_origin_are_accepted(node: Node) -> None:
    assert handshake(node, None) == 101


def test_the_pages_own_origin_is_accepted(node: Node) -> None:
    port = node.port
    assert handshake(node, f"http://127.0.0.1:{port}") == 101
    assert handshake(node, f"http://localhost:{port}", f"localhost:{port}") == 101


def test_a_rebound_dns_name_is_refused(node: Node) -> None:
    """Origin and Host agree, but the host is not one of ALLOWED_HOSTS (DNS rebinding)."""
    port = node.port
    assert handshake(node, f"http://evil.example:{port}", f"evil.example:{port}") == 403


def test_another_port_or_scheme_of_an_allowed_host_is_refused(node: Node) -> None:
    port = node.port
    assert handshake(node, "http://127.0.0.1:9") == 403
    assert handshake(node, "http://127.0.0.1") == 403
    assert handshake(node, f"https://127.0.0.1:{port}") == 403
    assert handshake(node, f"http://localhost:{port}") == 403  # Host says 127.0.0.1


def test_trusted_origins_as_written(node: Node) -> None:
    assert handshake(node, "https://chat.example.com") == 101
    assert handshake(node, "http://chat.example.com") == 403
    assert handshake(node, "https://chat.example.com:8443") == 403
    assert handshake(node, "https://rooms.example.org") == 101
    assert handshake(node, "http://rooms.example.org") == 403
    assert handshake(node, "https://example.org.evil.example") == 403


def test_foreign_and_malformed_origins_are_refused(node: Node) -> None:
    for origin in ("http://evil.example", "null", "file://", "chrome-extension://abc"):
        assert handshake(node, origin) == 403, origin
    assert handshake(node, "http://[") in (400, 403)  # the server may refuse it even earlier


# In-process: a secure socket, directly or behind a TLS proxy.


def scope(origin: str, host: str, scheme: str = "ws", **headers: str) -> dict[str, object]:
    raw = [(b"origin", origin.encode()), (b"host", host.encode())]
    raw += [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return {"type": "websocket", "scheme": scheme, "headers": raw}


def test_a_secure_socket_takes_an_https_page_only() -> None:
    assert origin_allowed(HandshakeRequest(scope("https://localhost", "localhost", "wss")))
    assert not origin_allowed(HandshakeRequest(scope("http://localhost", "localhost", "wss")))


@override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"))
def test_behind_a_tls_proxy_the_proxy_header_sets_the_scheme() -> None:
    behind = scope("https://localhost", "localhost", X_Forwarded_Proto="https")
    assert origin_allowed(HandshakeRequest(behind))
    assert not origin_allowed(HandshakeRequest(scope("https://localhost", "localhost")))
