"""Every rendered manifest, with every values file, validated offline against the Kubernetes
OpenAPI schemas that the ``kubernetes-validate`` package ships, in strict mode (unknown fields
are errors). CRDs the package has no schema for (the prometheus-operator ServiceMonitor) are
checked by hand."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helm.chartkit import Rendered

# The chart's minimum (Chart.yaml kubeVersion) and the version it is rendered for.
SCHEMA_VERSIONS = ("1.25", "1.31")
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def _name(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_manifests_validate_strictly(rendered: Rendered, version: str) -> None:
    import kubernetes_validate

    failures = []
    for doc in rendered.docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            failures.append(f"{_name(doc)}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            failures.append(f"{_name(doc)}: {exc.message}")
    assert not failures, "\n".join(failures)


def test_kubernetes_validate_rejects_an_unknown_field(rendered: Rendered) -> None:
    """The validator is strict for real: a misspelt field in the Deployment fails."""
    import copy

    import kubernetes_validate

    doc = copy.deepcopy(rendered.deployment)
    doc["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, SCHEMA_VERSIONS[-1], strict=True)


def test_service_monitor_shape(rendered: Rendered) -> None:
    monitors = rendered.of_kind("ServiceMonitor")
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        spec = monitor["spec"]
        assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
        for endpoint in spec["endpoints"]:
            allowed = {
                "port", "path", "interval", "scrapeTimeout", "honorLabels", "relabelings",
                "metricRelabelings", "scheme", "authorization",
            }  # fmt: skip
            assert set(endpoint) <= allowed, endpoint
            # prometheus-operator's SafeAuthorization: a type and a SecretKeySelector.
            auth = endpoint.get("authorization", {"type": "Bearer", "credentials": {}})
            assert set(auth) <= {"type", "credentials"} and auth["type"] == "Bearer"
            assert set(auth["credentials"]) <= {"name", "key", "optional"}
            assert isinstance(endpoint["port"], str)
            assert endpoint["path"] == "/metrics"
