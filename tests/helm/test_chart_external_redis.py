"""The chart against an external Redis Cluster or Sentinel: the URL forms REDIS_URL takes are
accepted (from values or from an existing Secret), the bundled Redis is off, and
chat.redisMinReplicas sets CHAT_REDIS_MIN_REPLICAS (an integer >= 0, nothing else)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.chartkit import CHART, KUBE_VERSION, Helm, HelmError, Render, Rendered

POD = "rehearsal-chat-7d9f8c6b5-abcde"
CI_CLUSTER = CHART / "ci" / "redis-cluster-values.yaml"
BASE: dict[str, Any] = {
    "django": {"existingSecret": "chat-django"},
    "database": {"existingSecret": "chat-database", "existingSecretKey": "url"},
}


def values_file(tmp_path: Path, redis: dict[str, Any], **top: Any) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({**BASE, **top, "redis": redis}))
    return path


def node_env(rendered: Rendered) -> Any:
    return rendered.env(rendered.deployment, "chat", POD)


def assert_no_bundled_redis(rendered: Rendered) -> None:
    assert not rendered.of_kind("StatefulSet")
    names = {doc["metadata"]["name"] for doc in rendered.of_kind("Service")}
    assert not [name for name in names if "redis" in name], names


def test_cluster_by_parts_renders_a_cluster_url_and_min_replicas(render: Render) -> None:
    rendered = render(CI_CLUSTER)
    env = node_env(rendered)
    assert env.values["REDIS_URL"] == (
        "rediss+cluster://chat:cl%40ster%2Fpass@redis-0.redis-cluster:6379,"
        "redis-1.redis-cluster:6379,redis-2.redis-cluster:6379/"
        "?ssl_ca_certs=/etc/chat/redis-ca/ca.crt&ssl_cert_reqs=required"
    )
    assert env.sources["REDIS_URL"].startswith("Secret/")  # never a plain env value
    assert env.values["CHAT_REDIS_MIN_REPLICAS"] == "1"
    assert_no_bundled_redis(rendered)


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://chat:secret@redis-0.redis:6379,redis-1.redis:6379/",
        "rediss+cluster://:secret@redis-0.redis:6380/?ssl_cert_reqs=required",
        "redis+sentinel://:secret@sentinel-0:26379,sentinel-1:26379/mymaster/0",
        "rediss+sentinel://:secret@sentinel-0:26379/mymaster/0?sentinel_password=s",
    ],
    ids=["cluster", "cluster-tls", "sentinel", "sentinel-tls"],
)
def test_an_external_url_of_every_form_is_kept_as_given(
    render: Render, tmp_path: Path, url: str
) -> None:
    path = values_file(tmp_path, {"bundled": {"enabled": False}, "external": {"url": url}})
    rendered = render(path)
    env = node_env(rendered)
    assert env.values["REDIS_URL"] == url
    assert env.values["CHAT_REDIS_MIN_REPLICAS"] == "0"  # the default
    assert_no_bundled_redis(rendered)


def test_a_cluster_url_from_an_existing_secret(render: Render, tmp_path: Path) -> None:
    """The production shape: the URL (with its password) lives in a Secret the chart does not
    render; the nodes read it from there, and the chart's own Secret holds no REDIS_URL."""
    redis = {
        "bundled": {"enabled": False},
        "external": {"existingSecret": "chat-redis-cluster", "existingSecretKey": "url"},
    }
    rendered = render(values_file(tmp_path, redis, chat={"redisMinReplicas": 2}))
    env = node_env(rendered)
    assert env.external["REDIS_URL"] == "Secret/chat-redis-cluster:url"
    assert env.values["CHAT_REDIS_MIN_REPLICAS"] == "2"
    for secret in rendered.of_kind("Secret"):
        assert "REDIS_URL" not in (secret.get("stringData") or {})
        assert "REDIS_URL" not in (secret.get("data") or {})
    assert_no_bundled_redis(rendered)


def test_min_replicas_defaults_to_zero(render: Render) -> None:
    assert node_env(render()).values["CHAT_REDIS_MIN_REPLICAS"] == "0"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("chat.redisMinReplicas=-1",), "redisMinReplicas"),
        (("chat.redisMinReplicas=1.5",), "redisMinReplicas"),
        (("chat.redisMinReplicas=two",), "redisMinReplicas"),
        (("redis.bundled.enabled=false", "redis.external.url=http://redis:6379"), "url"),
        (("redis.bundled.enabled=false", "redis.external.url=redis+cluster"), "url"),
        (
            (
                "redis.bundled.enabled=false",
                "redis.external.cluster.enabled=true",
                "redis.external.cluster.nodes[0]=redis-0",
            ),
            "nodes",
        ),
        (("redis.external.cluster.enable=true",), "enable"),
    ],
    ids=[
        "negative-replicas",
        "fractional-replicas",
        "text-replicas",
        "http-url",
        "url-without-address",
        "node-without-port",
        "mistyped-key",
    ],
)
def test_schema_rejects(helm: Helm, sets: tuple[str, ...], message: str) -> None:
    args = ["template", "r", str(CHART), "--kube-version", KUBE_VERSION]
    for item in sets:
        args += ["--set", item]
    with pytest.raises(HelmError) as refused:
        helm.run(*args)
    assert message in refused.value.output, refused.value.output


@pytest.mark.parametrize(
    ("redis", "message"),
    [
        (
            {"bundled": {"enabled": False}, "external": {"cluster": {"enabled": True}}},
            "list at least one cluster node",
        ),
        (
            {
                "bundled": {"enabled": False},
                "external": {"db": 2, "cluster": {"enabled": True, "nodes": ["r:6379"]}},
            },
            "only database 0",
        ),
        (
            {
                "bundled": {"enabled": False},
                "external": {
                    "cluster": {"enabled": True, "nodes": ["r:6379"]},
                    "sentinel": {"enabled": True, "hosts": ["s:26379"]},
                },
            },
            "not both",
        ),
        (
            {"external": {"cluster": {"enabled": True, "nodes": ["r:6379"]}}},
            "redis.bundled.enabled=false",
        ),
    ],
    ids=["no-nodes", "db-not-0", "sentinel-and-cluster", "bundled-still-on"],
)
def test_contradictory_values_are_refused(
    helm: Helm, tmp_path: Path, redis: dict[str, Any], message: str
) -> None:
    path = values_file(tmp_path, redis)
    with pytest.raises(HelmError) as refused:
        helm.run("template", "r", str(CHART), "--values", str(path))
    assert message in refused.value.output, refused.value.output


def test_min_replicas_with_the_bundled_redis_is_refused(helm: Helm) -> None:
    """The bundled Redis has no replica: a WAIT for one would fail every append."""
    with pytest.raises(HelmError) as refused:
        helm.run("template", "r", str(CHART), "--set", "chat.redisMinReplicas=1")
    assert "bundled Redis has none" in refused.value.output
