"""``helm lint --strict`` and ``helm template`` on the chart's defaults and every ci/ values file,
and the values the chart must refuse to render."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helm.chartkit import (
    CHART,
    KUBE_VERSION,
    VALUES_FILES,
    VALUES_IDS,
    Helm,
    HelmError,
    Render,
)


@pytest.mark.parametrize("values", VALUES_FILES, ids=VALUES_IDS)
def test_helm_lint_strict(helm: Helm, values: Path | None) -> None:
    args = ["lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION]
    if values is not None:
        args += ["--values", str(values)]
    output = helm.run(*args)
    assert "0 chart(s) failed" in output, output
    assert "[ERROR]" not in output and "[WARNING]" not in output, output


def test_ci_values_files_cover_the_required_cases() -> None:
    names = {path.stem for path in VALUES_FILES if path is not None}
    required = {"default-values", "external-redis-values", "hpa-on-values", "ingress-on-values"}
    assert required <= names


def test_template_renders_the_expected_kinds(render: Render) -> None:
    kinds = {doc["kind"] for doc in render().docs}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "Job", "StatefulSet"} <= kinds
    assert {"PodDisruptionBudget", "ServiceAccount"} <= kinds
    assert "HorizontalPodAutoscaler" not in kinds and "Ingress" not in kinds


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("terminationGracePeriodSeconds=25",), "must be larger than"),
        (("preStopSleepSeconds=30", "terminationGracePeriodSeconds=45"), "must be larger than"),
        (("redis.external.host=redis.example.com",), "redis.bundled.enabled=false"),
        (("redis.bundled.enabled=false",), "redis.external.url"),
        (
            ("redis.bundled.enabled=false", "redis.external.sentinel.enabled=true"),
            "sentinel.hosts",
        ),
        (("database.host=",), "database.url"),
        (("chat.redisMinReplicas=1",), "bundled Redis has none"),
        (
            ("autoscaling.enabled=true", "autoscaling.targetCPUUtilizationPercentage=null"),
            "targetCPUUtilizationPercentage",
        ),
    ],
    ids=[
        "grace-too-short",
        "prestop-too-long",
        "both-redis",
        "no-redis",
        "no-sentinels",
        "no-db",
        "replicas-without-replicas",
        "hpa-without-target",
    ],
)
def test_template_refuses_inconsistent_values(
    helm: Helm, sets: tuple[str, ...], message: str
) -> None:
    with pytest.raises(HelmError) as failure:
        helm.template(None, *sets)
    assert message in failure.value.output
