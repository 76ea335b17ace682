"""values.schema.json (a mistyped key or a bad value is an error), the scheduling defaults
(soft anti-affinity, spread over zones and hosts), the NetworkPolicies, the pass-through values
(extraEnv, extraVolumes, extraVolumeMounts) and image.digest."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.helm.chartkit import CHART, KUBE_VERSION, Helm, HelmError, Render, Rendered

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
DIGEST = "sha256:" + "ab" * 32


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = selector.get("matchLabels", {})
    return bool(wanted) and all(labels.get(key) == value for key, value in wanted.items())


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def migrate_job(rendered: Rendered) -> dict[str, Any]:
    (job,) = rendered.of_kind("Job")
    return job


# -- the schema --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("replicaCont=3",), "replicaCont"),  # a mistyped top-level key
        (("image.tagg=1.0",), "tagg"),  # a mistyped nested key
        (("chat.leaseTtlMS=3000",), "leaseTtlMS"),
        (("redis.bundled.persistence.sizee=1Gi",), "sizee"),
        (("replicaCount=two",), "replicaCount"),  # a wrong type
        (("chat.leaseTtlMs=10",), "leaseTtlMs"),  # below what the settings accept
        (("chat.rateLimit=fast",), "rateLimit"),
        (("chat.logLevel=LOUD",), "logLevel"),
        (("chat.redisMinReplicas=-1",), "redisMinReplicas"),
        (("image.digest=latest",), "digest"),
        (("image.pullPolicy=Sometimes",), "pullPolicy"),
        (("podAntiAffinityPreset=medium",), "podAntiAffinityPreset"),
        (("service.type=Internal",), "service.type"),
        (("extraEnv[0].value=x",), "name"),  # an EnvVar without its name
    ],
)
def test_schema_rejects_a_bad_value(helm: Helm, sets: tuple[str, ...], message: str) -> None:
    for command in (["template", "r", str(CHART)], ["lint", str(CHART), "--strict"]):
        args = [*command, "--kube-version", KUBE_VERSION]
        for item in sets:
            args += ["--set", item]
        with pytest.raises(HelmError) as refused:
            helm.run(*args)
        assert message in refused.value.output, refused.value.output


def test_schema_rejects_a_mistyped_key_in_a_values_file(helm: Helm, tmp_path: Any) -> None:
    values = tmp_path / "typo.yaml"
    values.write_text("networkPolicy:\n  redis:\n    enable: false\n")
    with pytest.raises(HelmError) as refused:
        helm.run("template", "r", str(CHART), "--values", str(values))
    assert "enable" in refused.value.output and "not allowed" in refused.value.output


def test_schema_accepts_kubernetes_objects_passed_through(render: Render) -> None:
    rendered = render(
        None,
        "resources.limits.nvidia\\.com/gpu=1",
        "extraEnv[0].name=A",
        "extraEnv[0].valueFrom.secretKeyRef.name=s",
        "extraEnv[0].valueFrom.secretKeyRef.key=k",
        "podAnnotations.example\\.com/team=chat",
    )
    env = {item["name"]: item for item in rendered.chat_container["env"]}
    assert env["A"]["valueFrom"] == {"secretKeyRef": {"name": "s", "key": "k"}}


def walk(values: dict[str, Any], schema: dict[str, Any], path: str = "") -> list[str]:
    """Where the schema and values.yaml disagree: every chart-owned object is closed
    (additionalProperties false) and lists exactly the keys values.yaml documents."""
    problems = []
    properties = schema.get("properties")
    if properties is None:  # a pass-through Kubernetes object or a map of strings
        return problems
    if schema.get("additionalProperties") is not False:
        problems.append(f"{path or '<root>'}: additionalProperties is not false")
    if set(properties) != set(values):
        problems.append(f"{path or '<root>'}: schema {sorted(properties)} != {sorted(values)}")
    for key, value in values.items():
        if isinstance(value, dict) and key in properties:
            problems += walk(value, properties[key], f"{path}.{key}".lstrip("."))
    return problems


def test_schema_covers_exactly_the_documented_values() -> None:
    assert walk(VALUES, SCHEMA) == []


# -- scheduling --------------------------------------------------------------------------------


def test_nodes_prefer_other_hosts_by_default(render: Render) -> None:
    rendered = render()
    spec = pod_spec(rendered.deployment)
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert matches(term["podAffinityTerm"]["labelSelector"], pod_labels(rendered.deployment))
    assert (
        "requiredDuringSchedulingIgnoredDuringExecution" not in spec["affinity"]["podAntiAffinity"]
    )


def test_nodes_spread_over_zones_and_hosts_as_a_preference_by_default(render: Render) -> None:
    rendered = render()
    constraints = pod_spec(rendered.deployment)["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in constraints] == [
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    ]
    for constraint in constraints:
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"  # never leaves a pod Pending
        assert constraint["maxSkew"] == 1
        assert matches(constraint["labelSelector"], pod_labels(rendered.deployment))


def test_hard_preset_requires_other_hosts(render: Render) -> None:
    anti = pod_spec(render(None, "podAntiAffinityPreset=hard").deployment)["affinity"][
        "podAntiAffinity"
    ]
    assert list(anti) == ["requiredDuringSchedulingIgnoredDuringExecution"]


def test_own_affinity_and_constraints_replace_the_defaults(render: Render) -> None:
    rendered = render(
        None,
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].key=pool",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
        "topologySpreadConstraints[0].maxSkew=2",
        "topologySpreadConstraints[0].topologyKey=rack",
        "topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule",
    )
    spec = pod_spec(rendered.deployment)
    assert list(spec["affinity"]) == ["nodeAffinity"]
    assert [c["topologyKey"] for c in spec["topologySpreadConstraints"]] == ["rack"]


def test_scheduling_defaults_can_be_turned_off(render: Render) -> None:
    spec = pod_spec(
        render(None, "podAntiAffinityPreset=", "defaultTopologySpread.enabled=false").deployment
    )
    assert "affinity" not in spec and "topologySpreadConstraints" not in spec


# -- NetworkPolicies ---------------------------------------------------------------------------


def test_only_the_nodes_reach_the_bundled_redis(render: Render) -> None:
    rendered = render()
    (policy,) = rendered.of_kind("NetworkPolicy")
    (redis,) = rendered.of_kind("StatefulSet")
    assert matches(policy["spec"]["podSelector"], pod_labels(redis))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}  # this namespace's pods only
    assert matches(peer["podSelector"], pod_labels(rendered.deployment))
    # Not the migration Job (it needs no Redis), not Redis itself, not any other pod.
    assert not matches(peer["podSelector"], pod_labels(migrate_job(rendered)))
    assert not matches(peer["podSelector"], pod_labels(redis))
    (container,) = pod_spec(redis)["containers"]
    assert [p["port"] for p in rule["ports"]] == [p["containerPort"] for p in container["ports"]]


def test_redis_policy_lets_in_extra_peers_and_can_be_turned_off(render: Render) -> None:
    rendered = render(None, "networkPolicy.redis.extraFrom[0].podSelector.matchLabels.app=exp")
    (policy,) = rendered.of_kind("NetworkPolicy")
    assert {"podSelector": {"matchLabels": {"app": "exp"}}} in policy["spec"]["ingress"][0]["from"]
    assert render(None, "networkPolicy.redis.enabled=false").of_kind("NetworkPolicy") == []


def test_no_redis_policy_with_an_external_redis(render: Render) -> None:
    rendered = render(
        None, "redis.bundled.enabled=false", "redis.external.url=redis://r.example.com:6379/0"
    )
    assert rendered.of_kind("NetworkPolicy") == []


def test_app_policy_opens_only_the_node_port_to_the_given_peers(render: Render) -> None:
    rendered = render(
        None,
        "networkPolicy.app.enabled=true",
        "networkPolicy.app.from[0].namespaceSelector.matchLabels.team=edge",
    )
    (policy,) = [
        p for p in rendered.of_kind("NetworkPolicy") if "redis" not in p["metadata"]["name"]
    ]
    assert matches(policy["spec"]["podSelector"], pod_labels(rendered.deployment))
    (rule,) = policy["spec"]["ingress"]
    port = rendered.chat_container["ports"][0]["containerPort"]
    assert rule["ports"] == [{"protocol": "TCP", "port": port}]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"team": "edge"}}}]
    assert "Egress" not in policy["spec"]["policyTypes"]


# -- pass-through values and the image -----------------------------------------------------------


def test_extra_env_and_volumes_reach_the_nodes_and_the_migration_job(render: Render) -> None:
    rendered = render(
        None,
        "extraEnv[0].name=PGSSLROOTCERT",
        "extraEnv[0].value=/etc/db-ca/ca.crt",
        "extraVolumes[0].name=db-ca",
        "extraVolumes[0].secret.secretName=db-ca",
        "extraVolumeMounts[0].name=db-ca",
        "extraVolumeMounts[0].mountPath=/etc/db-ca",
    )
    for workload in (rendered.deployment, migrate_job(rendered)):
        spec = pod_spec(workload)
        (container,) = spec["containers"]
        assert {"name": "PGSSLROOTCERT", "value": "/etc/db-ca/ca.crt"} == container["env"][-1]
        assert {"name": "db-ca", "mountPath": "/etc/db-ca"} in container["volumeMounts"]
        assert {"name": "db-ca", "secret": {"secretName": "db-ca"}} in spec["volumes"]


def test_image_digest_replaces_the_tag(render: Render) -> None:
    rendered = render(None, f"image.digest={DIGEST}", "image.tag=ignored")
    for workload in (rendered.deployment, migrate_job(rendered)):
        (container,) = pod_spec(workload)["containers"]
        assert container["image"] == f"chat@{DIGEST}"
    (container,) = pod_spec(render().deployment)["containers"]
    assert container["image"] == "chat:0.1.0"
