"""Log-in throttling (issue 9 item 7), from outside: POST the log-in forms of real nodes.

After N failures for one username from one address (``CHAT_LOGIN_RATE_LIMIT`` N/S), the pair
is answered 429 with a message saying how long to wait, even with the right password; the count
is shared by every node (Redis); a success clears it; other usernames are not affected; the
admin's log-in page counts the same way; the wait ends with the window.
"""

from __future__ import annotations

import http.cookiejar
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nodes import Cluster, Node, manage

PASSWORD = "a-long-test-password-9"
LIMIT = 3


@pytest.fixture(scope="module")
def cluster(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    data_dir = Path(tmp_path_factory.mktemp("login"))
    c = Cluster(redis_server, data_dir, CHAT_LOGIN_RATE_LIMIT=f"{LIMIT}/120")
    create = "from django.contrib.auth.models import User\n" + "".join(
        f"User.objects.create_user({name!r}, password={PASSWORD!r}, is_staff=True)\n"
        for name in ("alice", "bob", "carol", "dave", "erin", "frank")
    )
    manage("shell", "-c", create, env=c.env)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def nodes(cluster: Cluster) -> tuple[Node, Node]:
    return cluster.add("login-a"), cluster.add("login-b")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def attempt(
    node: Node,
    username: str,
    password: str,
    page: str = "/accounts/login/",
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    """One log-in through the form, as a browser does it: (status, page text)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect())
    opener.addheaders = list((headers or {}).items())
    with opener.open(f"{node.http}{page}", timeout=10) as response:
        form = response.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    assert token is not None
    data = {"username": username, "password": password, "csrfmiddlewaretoken": token[1]}
    request = urllib.request.Request(
        f"{node.http}{page}", data=urllib.parse.urlencode(data).encode()
    )
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def fail(node: Node, username: str, times: int) -> None:
    for _ in range(times):
        status, text = attempt(node, username, "wrong-password")
        assert status == 200 and "correct username and password" in text, status


def test_the_pair_is_throttled_after_n_failures_even_with_the_right_password(
    nodes: tuple[Node, Node],
) -> None:
    a, _ = nodes
    fail(a, "alice", LIMIT)
    status, text = attempt(a, "alice", PASSWORD)
    assert status == 429
    assert "Too many failed log-in attempts" in text and "Try again in" in text


def test_the_count_is_shared_by_every_node(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    fail(a, "bob", LIMIT - 1)
    fail(b, "bob", 1)
    assert attempt(a, "bob", PASSWORD)[0] == 429
    assert attempt(b, "bob", "wrong-password")[0] == 429


def test_other_usernames_are_not_affected(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    fail(a, "carol", LIMIT)
    assert attempt(a, "dave", PASSWORD)[0] == 302  # logged in, redirected


def test_a_success_clears_the_count(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    fail(a, "erin", LIMIT - 1)
    assert attempt(a, "erin", PASSWORD)[0] == 302
    fail(a, "erin", LIMIT - 1)
    assert attempt(a, "erin", PASSWORD)[0] == 302


def test_the_admin_login_page_is_throttled_too(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    for _ in range(LIMIT):
        status, text = attempt(a, "frank", "wrong-password", "/admin/login/")
        assert status == 200 and "correct username and password" in text
    status, text = attempt(a, "frank", PASSWORD, "/admin/login/")
    assert status == 200 and "Too many failed log-in attempts" in text


def test_behind_a_trusted_proxy_each_client_address_counts_apart(cluster: Cluster) -> None:
    node = cluster.add("login-proxied", CHAT_TRUSTED_PROXIES="127.0.0.1")
    first, second = {"X-Forwarded-For": "203.0.113.1"}, {"X-Forwarded-For": "203.0.113.2"}
    for _ in range(LIMIT):
        assert attempt(node, "yolanda", "wrong-password", headers=first)[0] == 200
    assert attempt(node, "yolanda", "wrong-password", headers=first)[0] == 429
    status, text = attempt(node, "yolanda", "wrong-password", headers=second)
    assert status == 200 and "correct username and password" in text


def test_the_wait_ends_with_the_window(cluster: Cluster) -> None:
    node = cluster.add("login-short", CHAT_LOGIN_RATE_LIMIT="2/2")
    fail(node, "zed-nobody", 2)
    assert attempt(node, "zed-nobody", "wrong-password")[0] == 429
    deadline = time.monotonic() + 15
    while attempt(node, "zed-nobody", "wrong-password")[0] == 429:
        assert time.monotonic() < deadline, "still throttled long after the window"
        time.sleep(0.2)
