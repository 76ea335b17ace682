"""Production fails closed (issue 9 item 4): DEBUG is off unless asked for; with DEBUG off a node
refuses the development key, a missing REDIS_URL and SQLite (unless CHAT_ALLOW_SQLITE=1);
HTTPS settings are on; ``check --deploy`` is clean with production settings; error pages never
show the Redis password. Driven through subprocesses and HTTP where it can be.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import RequestFactory, override_settings
from django.views.debug import ExceptionReporter

from tests.support.nodes import Cluster, Node, base_env

ROOT = Path(__file__).resolve().parents[1]
KEY = "prod-" + "q7Zx2" * 12
SECRET_URL = "redis+sentinel://chat:hunter2pw@s1:26379,s2:26379/mymaster/0?sentinel_password=s3cr3t"


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of an operator who set nothing: no CHAT_* or DJANGO_* at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "DJANGO_"))}
    env.pop("REDIS_URL", None)
    env.pop("DATABASE_URL", None)
    env.update({"CHAT_DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1", **extra})
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def runnode(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return manage(env, "runnode", "--host", "127.0.0.1", "--port", "0")


def test_debug_is_off_by_default(tmp_path: Path) -> None:
    probe = "import django; django.setup(); from django.conf import settings as s; print(s.DEBUG)"
    env = {**clean_env(tmp_path), "DJANGO_SETTINGS_MODULE": "chatsite.settings"}
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_a_node_refuses_the_development_key(tmp_path: Path, redis_url: str) -> None:
    result = runnode(clean_env(tmp_path, REDIS_URL=redis_url, CHAT_ALLOW_SQLITE="1"))
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr
    assert "serving on" not in result.stdout


def test_a_node_refuses_to_start_a_private_redis(tmp_path: Path) -> None:
    result = runnode(clean_env(tmp_path, DJANGO_SECRET_KEY=KEY, CHAT_ALLOW_SQLITE="1"))
    assert result.returncode != 0
    assert "REDIS_URL" in result.stderr
    assert "embedded Redis" not in result.stdout
    assert not (tmp_path / "redis").exists(), "an embedded Redis was started anyway"


def test_a_node_refuses_sqlite_unless_allowed(tmp_path: Path, redis_url: str) -> None:
    result = runnode(clean_env(tmp_path, DJANGO_SECRET_KEY=KEY, REDIS_URL=redis_url))
    assert result.returncode != 0
    assert "CHAT_ALLOW_SQLITE" in result.stderr and "DATABASE_URL" in result.stderr


def test_every_refusal_is_named_at_once(tmp_path: Path) -> None:
    result = runnode(clean_env(tmp_path))
    assert result.returncode != 0
    for name in ("DJANGO_SECRET_KEY", "REDIS_URL", "CHAT_ALLOW_SQLITE"):
        assert name in result.stderr


def test_check_deploy_is_clean_with_production_settings(tmp_path: Path) -> None:
    env = clean_env(
        tmp_path,
        DJANGO_SECRET_KEY=KEY,
        DJANGO_ALLOWED_HOSTS="chat.example.com",
        REDIS_URL="redis://redis.example:6379/0",
        DATABASE_URL="postgres://chat:pw@db.example:5432/chat",
    )
    result = manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_deploy_fails_on_development_settings(tmp_path: Path) -> None:
    result = manage(clean_env(tmp_path), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0
    for check_id in ("chat.E001", "chat.E003", "chat.E004"):
        assert check_id in result.stderr


@pytest.fixture
def production_node(redis_url: str, tmp_path: Path) -> Iterator[Node]:
    """A node with production's HTTPS settings (only SQLite allowed), behind a TLS proxy."""
    cluster = Cluster(redis_url, tmp_path)
    env = base_env(redis_url, tmp_path, DJANGO_SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto")
    for name in ("DJANGO_SECURE_SSL_REDIRECT", "DJANGO_SECURE_COOKIES"):
        env.pop(name)  # the production defaults
    node = Node("prod", env)
    try:
        yield node.start()
    finally:
        node.ensure_stopped()
        cluster.close()


def test_production_speaks_https_only(production_node: Node) -> None:
    url = f"{production_node.http}/accounts/login/"
    opener = urllib.request.build_opener(NoRedirect())
    with pytest.raises(urllib.error.HTTPError) as plain:
        opener.open(url, timeout=10)
    assert plain.value.code == 301
    assert plain.value.headers["Location"].startswith("https://")
    request = urllib.request.Request(url, headers={"X-Forwarded-Proto": "https"})
    with opener.open(request, timeout=10) as response:
        assert response.status == 200
        hsts = response.headers["Strict-Transport-Security"]
        cookies = response.headers.get_all("Set-Cookie")
    assert "max-age=31536000" in hsts and "includeSubDomains" in hsts
    assert cookies and all("Secure" in cookie for cookie in cookies), cookies
    # Probes and scrapes reach a pod over plain http: never redirected.
    assert opener.open(f"{production_node.http}/healthz", timeout=10).status == 200


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


@override_settings(DEBUG=True, CHAT_REDIS_URL=SECRET_URL)
def test_the_debug_error_page_never_shows_the_redis_password() -> None:
    """The 500 page lists settings and every frame's local variables: none shows a password."""

    class Runtime:  # what a dataclass holding the URL looks like in a frame
        def __repr__(self) -> str:
            return f"ClusterRuntime(redis_url={SECRET_URL!r})"

    def failing(redis_url: str, runtime: Runtime) -> None:
        raise RuntimeError("boom")

    try:
        failing(SECRET_URL, Runtime())
    except RuntimeError:
        exc_type, exc, tb = sys.exc_info()
    request = RequestFactory().get("/api/rooms/x/events?after=1")
    html = ExceptionReporter(request, exc_type, exc, tb).get_traceback_html()
    text = ExceptionReporter(request, exc_type, exc, tb).get_traceback_text()
    for page in (html, text):
        assert "hunter2pw" not in page and "s3cr3t" not in page
    assert "CHAT_REDIS_URL" in html  # listed, value hidden


# Secrets never in logs or process lists (issue 9 item 7).


def test_the_startup_line_redacts_the_redis_url_whole(tmp_path: Path) -> None:
    import redis

    from chatsite.redact import redact_url
    from cluster.embedded import EmbeddedRedis

    server = EmbeddedRedis.start(tmp_path / "redis", appendonly=False)
    node: Node | None = None
    try:
        redis.Redis(port=server.port).config_set("requirepass", "S3cretPw")
        url = f"redis://default:S3cretPw@127.0.0.1:{server.port}/0?client_name=Q7uerySecret"
        redis.Redis.from_url(url).ping()
        node = Node("redacted", base_env(url, tmp_path)).start()
        assert node.log_path is not None
        log = node.log_path.read_text()
        assert "serving on" in log
        assert f"***@127.0.0.1:{server.port}/0?***" in log
        for secret in ("S3cretPw", "Q7uerySecret"):
            assert secret not in log
            assert secret not in Path(f"/proc/{node.pid}/cmdline").read_text()
    finally:
        if node is not None:
            node.ensure_stopped()
        server.stop()
    sentinel = redact_url(SECRET_URL)
    assert "hunter2pw" not in sentinel and "s3cr3t" not in sentinel and "s1:26379" in sentinel
