"""Operations endpoints (issue 9 item 5): ``/metrics`` and ``/api/cluster/`` answer loopback
clients, staff sessions and the ops token; everyone else gets 403 JSON. ``/healthz`` and
``/readyz`` stay open. Driven over HTTP against a real ``runnode``; the non-loopback peer is a
request forwarded by a proxy (``X-Forwarded-For``), which is what a remote client looks like to
a node on loopback-only test machines, plus in-process checks with a non-loopback peer address.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient, override_settings

from tests.support.nodes import Cluster, Node, manage

TOKEN = "ops-token-" + "x" * 40
OPS = ("/metrics", "/api/cluster/")
REMOTE = {"X-Forwarded-For": "203.0.113.9"}  # what a proxy adds for a remote client
PASSWORD = "a-long-test-password-9"


@pytest.fixture(scope="module")
def node(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    cluster = Cluster(redis_server, Path(tmp_path_factory.mktemp("ops")), CHAT_OPS_TOKEN=TOKEN)
    env = {**cluster.env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD}
    manage("createsuperuser", "--noinput", "--username", "boss", "--email", "b@x.org", env=env)
    create_plain = "from django.contrib.auth.models import User; " \
        f"User.objects.create_user('plain', password={PASSWORD!r})"  # fmt: skip
    manage("shell", "-c", create_plain, env=cluster.env)
    try:
        yield cluster.add("ops")
    finally:
        cluster.close()


def fetch(
    node: Node,
    path: str,
    headers: dict[str, str] | None = None,
    opener: urllib.request.OpenerDirector | None = None,
) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{node.http}{path}", headers=headers or {})
    try:
        with (opener or urllib.request.build_opener()).open(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def login(node: Node, username: str) -> urllib.request.OpenerDirector:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    status, page = fetch(node, "/accounts/login/", opener=opener)
    assert status == 200
    match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match is not None
    form = {"username": username, "password": PASSWORD, "csrfmiddlewaretoken": match[1].decode()}
    request = urllib.request.Request(
        f"{node.http}/accounts/login/", data=urllib.parse.urlencode(form).encode()
    )
    with opener.open(request, timeout=10) as response:
        assert response.status == 200
    assert any(cookie.name == "sessionid" for cookie in jar), "the log-in did not succeed"
    return opener


def assert_forbidden(status: int, body: bytes) -> None:
    assert status == 403, (status, body[:200])
    assert json.loads(body)["code"] == "forbidden"


def test_a_loopback_client_reads_them(node: Node) -> None:
    for path in OPS:
        status, body = fetch(node, path)
        assert status == 200, (path, status, body[:200])
    assert b"chat_node_ready" in fetch(node, "/metrics")[1]
    assert json.loads(fetch(node, "/api/cluster/")[1])["node"] == "ops"


def test_a_remote_client_needs_the_token(node: Node) -> None:
    for path in OPS:
        assert_forbidden(*fetch(node, path, REMOTE))
        assert_forbidden(*fetch(node, path, {**REMOTE, "Authorization": "Bearer wrong"}))
        assert_forbidden(*fetch(node, path, {**REMOTE, "Authorization": f"Basic {TOKEN}"}))
        status, _ = fetch(node, path, {**REMOTE, "Authorization": f"Bearer {TOKEN}"})
        assert status == 200, path


def test_probes_stay_open_to_everyone(node: Node) -> None:
    for path in ("/healthz", "/readyz"):
        assert fetch(node, path, {**REMOTE, "Host": "10.244.1.17:8000"})[0] == 200, path


def test_a_scrape_with_the_token_may_address_the_pod_ip(node: Node) -> None:
    pod_ip = {**REMOTE, "Host": "10.244.1.17:8000", "Authorization": f"Bearer {TOKEN}"}
    status, body = fetch(node, "/metrics", pod_ip)
    assert status == 200 and b"chat_node_ready" in body


def test_skipping_the_host_check_is_no_way_around_the_rule(node: Node) -> None:
    """A browser on the node's host, sent to a rebound DNS name: loopback, but a foreign Host."""
    for path in OPS:
        status, body = fetch(node, path, {"Host": "rebound.example:8000"})
        assert status in (400, 403), (path, status)
        assert b"chat_node_ready" not in body and b'"nodes"' not in body


def test_a_staff_session_reads_them_from_anywhere(node: Node) -> None:
    staff = login(node, "boss")
    for path in OPS:
        status, _ = fetch(node, path, REMOTE, opener=staff)
        assert status == 200, path


def test_a_session_without_staff_rights_does_not(node: Node) -> None:
    plain = login(node, "plain")
    for path in OPS:
        assert_forbidden(*fetch(node, path, REMOTE, opener=plain))


# In-process: a peer address that is not loopback at all.


class RemoteClient(AsyncClient):
    """The test client as a peer that is not loopback at all."""

    def _base_scope(self, **request: Any) -> dict[str, Any]:
        scope: dict[str, Any] = super()._base_scope(**request)  # type: ignore[misc]
        scope["client"] = ["198.51.100.7", 40000]
        return scope


@pytest.mark.django_db(transaction=True)  # async ORM runs outside the test transaction
async def test_a_remote_peer_gets_403_and_staff_200(runtime: Any) -> None:
    for path in OPS:
        assert_forbidden(*_parts(await RemoteClient().get(path)))
    staff = await User.objects.acreate(username="st", is_staff=True)
    client = RemoteClient()
    await client.aforce_login(staff)
    for path in OPS:
        assert (await client.get(path)).status_code == 200, path
    staff.is_active = False
    await staff.asave()
    for path in OPS:
        assert (await client.get(path)).status_code == 403, path


@override_settings(CHAT_OPS_TOKEN="")
async def test_without_a_token_configured_no_bearer_opens_them(runtime: Any) -> None:
    for given in ("", " ", "None"):
        client = RemoteClient(headers={"Authorization": f"Bearer {given}"})
        for path in OPS:
            assert_forbidden(*_parts(await client.get(path)))


def _parts(response: Any) -> tuple[int, bytes]:
    return response.status_code, response.content
