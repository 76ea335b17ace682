"""Invariants of the rendered chart, for the defaults and every ci/ values file: the wiring
between the manifests and the app (chatsite/settings.py, runnode, the HTTP endpoints) that a
schema cannot see."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from tests.helm.chartkit import (
    ROOT,
    Render,
    Rendered,
    container,
    hook_events,
    hook_weight,
    is_hook,
    pod_spec,
)

POD = "rehearsal-chat-7d9f8c6b5-abcde"
# What the production settings must get from the chart (DESIGN.md, CONTRACT.md).
REQUIRED_ENV = {
    "DJANGO_SECRET_KEY",
    "DJANGO_ALLOWED_HOSTS",
    "DJANGO_DEBUG",
    "REDIS_URL",
    "DATABASE_URL",
    "CHAT_NODE_NAME",
    "CHAT_DATA_DIR",
    "CHAT_DRAIN_TIMEOUT_S",
    "CHAT_OPS_TOKEN",
}
SECRET_ENV = {"DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "CHAT_OPS_TOKEN"}
# The app's own paths (CONTRACT.md: HTTP).
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"


def prestop_seconds(item: dict[str, Any]) -> float:
    """How long the container's preStop hook takes (0 without one)."""
    hook = (item.get("lifecycle") or {}).get("preStop")
    if hook is None:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    if len(command) == 2 and command[0] in ("sleep", "/bin/sleep", "/usr/bin/sleep"):
        return float(command[1])
    if command[:2] == ["sh", "-c"] and re.fullmatch(r"sleep \d+(\.\d+)?", command[2]):
        return float(command[2].split()[1])
    raise AssertionError(f"preStop {hook} is not a plain sleep: its duration is unknown")


def container_port(item: dict[str, Any], port: int | str) -> int:
    for declared in item.get("ports") or []:
        if port in (declared.get("name"), declared["containerPort"]):
            return int(declared["containerPort"])
    raise AssertionError(f"port {port!r} is not a port of container {item['name']}")


def listen_port(item: dict[str, Any]) -> int:
    argv = [*item.get("command", []), *item.get("args", [])]
    assert "--port" in argv, argv
    return int(argv[argv.index("--port") + 1])


# ------------------------------------------------------------------------------------------------
# The node process
# ------------------------------------------------------------------------------------------------


def test_command_is_runnode_in_exec_form(rendered: Rendered) -> None:
    item = rendered.chat_container
    argv = [*item["command"], *item.get("args", [])]
    assert argv[:3] == ["python", "manage.py", "runnode"], argv
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert container_port(item, listen_port(item)) == listen_port(item)


def test_grace_period_exceeds_drain_plus_prestop(rendered: Rendered) -> None:
    spec = pod_spec(rendered.deployment)
    env = rendered.env(rendered.deployment, "chat", POD)
    drain = int(env.values["CHAT_DRAIN_TIMEOUT_S"])
    prestop = prestop_seconds(rendered.chat_container)
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > drain + prestop, f"grace {grace} <= drain {drain} + preStop {prestop}"


def test_probes_hit_paths_the_app_serves_on_its_port(rendered: Rendered) -> None:
    item = rendered.chat_container
    port = listen_port(item)
    env = rendered.env(rendered.deployment, "chat", POD)
    allowed = env.values["DJANGO_ALLOWED_HOSTS"].split(",")
    expected = {
        "livenessProbe": {LIVENESS_PATH},
        "readinessProbe": {READINESS_PATH},
        "startupProbe": {LIVENESS_PATH, READINESS_PATH},
    }
    for probe_name, paths in expected.items():
        probe = item[probe_name]
        get = probe["httpGet"]
        assert get["path"] in paths, f"{probe_name} path {get['path']}"
        assert container_port(item, get["port"]) == port, f"{probe_name} port {get['port']}"
        assert get.get("scheme", "HTTP") == "HTTP"
        # Django answers 400 to a Host outside ALLOWED_HOSTS, and a probe's default Host is the
        # pod IP: the header the probes send must be an allowed host.
        host = next(h["value"] for h in get.get("httpHeaders", []) if h["name"] == "Host")
        assert host.split(":")[0] in allowed, f"{probe_name} Host {host} not in {allowed}"
    assert item["readinessProbe"]["httpGet"]["path"] != item["livenessProbe"]["httpGet"]["path"]


# ------------------------------------------------------------------------------------------------
# Environment
# ------------------------------------------------------------------------------------------------


def _chat_workloads(rendered: Rendered) -> list[tuple[dict[str, Any], str]]:
    found = [(rendered.deployment, "chat")]
    found += [
        (job, c["name"]) for job in rendered.of_kind("Job") for c in pod_spec(job)["containers"]
    ]
    return found


def test_every_variable_set_is_one_the_settings_read(
    rendered: Rendered, environment: dict[str, str]
) -> None:
    for workload, name in _chat_workloads(rendered):
        env = rendered.env(workload, name, POD)
        unknown = env.names - set(environment)
        assert not unknown, f"{workload['kind']}: not in settings.ENVIRONMENT: {sorted(unknown)}"


def test_required_production_variables_are_set(
    rendered: Rendered, environment: dict[str, str]
) -> None:
    assert set(environment) >= REQUIRED_ENV, "the test's REQUIRED_ENV names unknown variables"
    env = rendered.env(rendered.deployment, "chat", POD)
    missing = REQUIRED_ENV - env.names
    assert not missing, f"the Deployment does not set {sorted(missing)}"
    assert env.values["DJANGO_DEBUG"] == "false"
    assert env.values["CHAT_NODE_NAME"] == POD, "the node name must be the pod name"
    for name in SECRET_ENV:
        assert env.sources[name].startswith("Secret/"), f"{name} comes from {env.sources[name]}"
    for name, value in env.values.items():
        if name in REQUIRED_ENV:
            assert value.strip(), f"{name} is empty"


def test_secrets_never_appear_in_configmaps(rendered: Rendered) -> None:
    for config in rendered.of_kind("ConfigMap"):
        assert not SECRET_ENV & set(config.get("data") or {}), config["metadata"]["name"]


def test_data_dir_is_a_writable_empty_dir(rendered: Rendered) -> None:
    for workload, name in _chat_workloads(rendered):
        item = container(workload, name)
        env = rendered.env(workload, name, POD)
        assert item["securityContext"]["readOnlyRootFilesystem"] is True
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        mounts = {m["mountPath"]: m for m in item["volumeMounts"]}
        for path in (env.values["CHAT_DATA_DIR"], "/tmp"):
            assert path in mounts, f"{workload['kind']}: {path} is not mounted"
            assert not mounts[path].get("readOnly", False)
            assert "emptyDir" in volumes[mounts[path]["name"]]


def test_settings_accept_the_rendered_environment(rendered: Rendered) -> None:
    """Import chatsite.settings with exactly the Deployment's environment: every value parses."""
    env = rendered.env(rendered.deployment, "chat", POD)
    child_env = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "chatsite.settings"}
    child_env.update(env.values)
    # Values held in existing Secrets are not in the chart: stand-ins of the right shape.
    stand_ins = {
        "DJANGO_SECRET_KEY": "x" * 50,
        "DATABASE_URL": "postgres://chat:pw@db:5432/chat",
        "REDIS_URL": "redis://redis:6379/0",
        "CHAT_OPS_TOKEN": "t" * 40,
    }
    for name in env.external:
        child_env[name] = stand_ins[name]
    probe = (
        "import json, chatsite.settings as s; print(json.dumps({'debug': s.DEBUG, "
        "'hosts': s.ALLOWED_HOSTS, 'drain': s.CHAT_DRAIN_TIMEOUT_S, 'node': s.CHAT_NODE_NAME, "
        "'db': s.DATABASES['default']['ENGINE'], 'data': str(s.CHAT_DATA_DIR)}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=child_env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["debug"] is False
    assert "localhost" in loaded["hosts"]
    assert loaded["drain"] == int(env.values["CHAT_DRAIN_TIMEOUT_S"])
    assert loaded["node"] == POD
    assert loaded["db"] == "django.db.backends.postgresql"
    assert loaded["data"] == env.values["CHAT_DATA_DIR"]


def test_redis_url_is_one_redis_py_parses(rendered: Rendered) -> None:
    from redis.connection import parse_url

    env = rendered.env(rendered.deployment, "chat", POD)
    url = env.values.get("REDIS_URL")
    if url is None:
        pytest.skip("REDIS_URL comes from an existing Secret: nothing rendered to check")
    if "+sentinel://" in url:
        from cluster.connection import parse_sentinel_url

        target = parse_sentinel_url(url)  # raises ValueError on a URL the app cannot use
        assert target.sentinels and target.master
        return
    if "+cluster://" in url:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        nodes = parts.netloc.rpartition("@")[2].split(",")
        assert nodes and all(n.rpartition(":")[2].isdigit() for n in nodes), url
        assert parts.path in ("", "/"), "a Redis Cluster has only database 0"
        return
    parsed = parse_url(url)
    assert parsed["host"]
    if url.startswith("rediss://") and "ssl_ca_certs" in parsed:
        mounts = [m["mountPath"] for m in rendered.chat_container["volumeMounts"]]
        assert any(parsed["ssl_ca_certs"].startswith(path + "/") for path in mounts)
    if rendered.of_kind("StatefulSet"):
        service = parsed["host"].split(".")[0]
        assert rendered.get("Service", service) is not None, f"{service} is not a rendered Service"
        assert parsed.get("password"), "the bundled Redis requires a password"


# ------------------------------------------------------------------------------------------------
# Migration hook
# ------------------------------------------------------------------------------------------------


def _references(workload: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of every object the pod needs to exist before it can start."""
    spec = pod_spec(workload)
    refs: set[tuple[str, str]] = set()
    if spec.get("serviceAccountName"):
        refs.add(("ServiceAccount", spec["serviceAccountName"]))
    for item in spec["containers"] + spec.get("initContainers", []):
        for ref in item.get("envFrom") or []:
            if "configMapRef" in ref:
                refs.add(("ConfigMap", ref["configMapRef"]["name"]))
            if "secretRef" in ref:
                refs.add(("Secret", ref["secretRef"]["name"]))
        for var in item.get("env") or []:
            source = var.get("valueFrom") or {}
            if "secretKeyRef" in source:
                refs.add(("Secret", source["secretKeyRef"]["name"]))
            if "configMapKeyRef" in source:
                refs.add(("ConfigMap", source["configMapKeyRef"]["name"]))
    for volume in spec.get("volumes") or []:
        if "secret" in volume:
            refs.add(("Secret", volume["secret"]["secretName"]))
        if "configMap" in volume:
            refs.add(("ConfigMap", volume["configMap"]["name"]))
        if "persistentVolumeClaim" in volume:
            refs.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
    return refs


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(rendered: Rendered) -> None:
    job = rendered.one("Job")
    assert {"pre-install", "pre-upgrade"} <= hook_events(job)
    item = pod_spec(job)["containers"][0]
    assert item["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"].get("activeDeadlineSeconds"), "a stuck migration must not block forever"


def test_migration_hook_needs_nothing_that_does_not_exist_yet(rendered: Rendered) -> None:
    """On a first install the release's own objects are created after the pre-install hooks:
    everything the Job uses must be a hook of the same events with a lower weight, or come
    from outside the chart (an existing Secret)."""
    job = rendered.one("Job")
    for kind, name in sorted(_references(job)):
        needed = rendered.get(kind, name)
        if needed is None:
            continue  # not rendered by the chart: exists before the release
        assert is_hook(needed), f"the migration hook needs {kind}/{name}, a release object"
        assert hook_events(job) <= hook_events(needed), f"{kind}/{name} is not created for all"
        assert hook_weight(needed) < hook_weight(job), f"{kind}/{name} is created after the Job"
        policy = needed["metadata"]["annotations"].get("helm.sh/hook-delete-policy", "")
        assert "before-hook-creation" in policy, f"{kind}/{name} would clash on the next upgrade"


def test_migration_job_uses_the_release_configuration(rendered: Rendered) -> None:
    """The hook copies carry the same settings and the same database as the release."""
    job = rendered.one("Job")
    job_env = rendered.env(job, pod_spec(job)["containers"][0]["name"], POD)
    node_env = rendered.env(rendered.deployment, "chat", POD)
    for name in sorted(job_env.names):
        if name in job_env.values and name in node_env.values:
            assert job_env.values[name] == node_env.values[name], name
        else:
            assert job_env.sources[name] == node_env.sources[name], name
    assert "DATABASE_URL" in job_env.names


def test_only_the_migration_objects_are_hooks(rendered: Rendered) -> None:
    hooks = {(d["kind"], d["metadata"]["name"]) for d in rendered.docs if is_hook(d)}
    job_name = rendered.one("Job")["metadata"]["name"]
    assert hooks <= {("Job", job_name), ("ConfigMap", job_name), ("Secret", job_name)}


# ------------------------------------------------------------------------------------------------
# Security
# ------------------------------------------------------------------------------------------------


def test_every_pod_runs_as_non_root_on_a_read_only_root(rendered: Rendered) -> None:
    workloads = [
        d for d in rendered.docs if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet")
    ]
    assert workloads
    for workload in workloads:
        spec = pod_spec(workload)
        pod_sc = spec.get("securityContext") or {}
        assert spec.get("automountServiceAccountToken") is False
        for item in spec["containers"]:
            sc = {**pod_sc, **(item.get("securityContext") or {})}
            where = f"{workload['kind']}/{workload['metadata']['name']}/{item['name']}"
            assert sc.get("runAsNonRoot") is True, where
            assert sc.get("runAsUser", 1) != 0, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in (sc.get("capabilities") or {}).get("drop", []), where
            assert not sc.get("privileged", False), where
            assert item.get("resources", {}).get("requests"), f"{where} has no requests"


# ------------------------------------------------------------------------------------------------
# Rollout and configuration changes
# ------------------------------------------------------------------------------------------------


def test_a_config_change_rolls_the_pods(render: Render) -> None:
    def checksum(*sets: str) -> str:
        annotations = render(None, *sets).deployment["spec"]["template"]["metadata"]["annotations"]
        assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
        return annotations["checksum/config"]

    assert checksum() == checksum()
    assert checksum() != checksum("chat.logLevel=DEBUG")
    assert checksum() != checksum("chat.drainTimeoutSeconds=25")


def test_a_rolling_update_never_lowers_capacity(rendered: Rendered) -> None:
    strategy = rendered.deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] >= 1


def test_replicas_belong_to_the_hpa_when_it_is_on(rendered: Rendered) -> None:
    hpas = rendered.of_kind("HorizontalPodAutoscaler")
    if not hpas:
        assert rendered.deployment["spec"]["replicas"] >= 2
        return
    (hpa,) = hpas
    assert "replicas" not in rendered.deployment["spec"], "helm upgrade would reset the HPA"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        rendered.deployment["metadata"]["name"],
    )
    assert hpa["spec"]["minReplicas"] >= 2
    assert rendered.chat_container["resources"]["requests"]["cpu"], "CPU target needs requests"


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_pdb_selects_exactly_the_nodes(rendered: Rendered) -> None:
    pod_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    for pdb in rendered.of_kind("PodDisruptionBudget"):
        assert _selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
        job_pods = [j["spec"]["template"]["metadata"]["labels"] for j in rendered.of_kind("Job")]
        assert not any(_selects(pdb["spec"]["selector"]["matchLabels"], j) for j in job_pods)


# ------------------------------------------------------------------------------------------------
# Networking
# ------------------------------------------------------------------------------------------------


def test_services_reach_the_node_port(rendered: Rendered) -> None:
    pod_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    item = rendered.chat_container
    fullname = rendered.deployment["metadata"]["name"]
    main = rendered.get("Service", fullname)
    assert main is not None
    node_services = [
        s for s in rendered.of_kind("Service") if _selects(s["spec"]["selector"], pod_labels)
    ]
    assert main in node_services
    for service in node_services:
        for port in service["spec"]["ports"]:
            assert container_port(item, port["targetPort"]) == listen_port(item)
        assert (
            "sessionAffinity" not in service["spec"] or service["spec"]["sessionAffinity"] == "None"
        )
    headless = rendered.get("Service", f"{fullname}-headless")
    if headless is not None:
        assert headless["spec"]["clusterIP"] == "None"
        assert headless["spec"]["publishNotReadyAddresses"] is True


def test_ingress_routes_everything_including_websockets_to_the_service(
    rendered: Rendered,
) -> None:
    env = rendered.env(rendered.deployment, "chat", POD)
    allowed = env.values["DJANGO_ALLOWED_HOSTS"].split(",")
    origins = env.values.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",")
    tls_hosts = {
        h
        for ingress in rendered.of_kind("Ingress")
        for t in ingress["spec"].get("tls", [])
        for h in t["hosts"]
    }
    for ingress in rendered.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            assert rule["host"] in allowed, f"{rule['host']} is not in DJANGO_ALLOWED_HOSTS"
            scheme = "https" if rule["host"] in tls_hosts else "http"
            assert f"{scheme}://{rule['host']}" in origins
            covered = False
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = rendered.get("Service", backend["name"])
                assert service is not None, backend
                names = {p["name"] for p in service["spec"]["ports"]}
                numbers = {p["port"] for p in service["spec"]["ports"]}
                assert (
                    backend["port"].get("name") in names or backend["port"].get("number") in numbers
                )
                if path["pathType"] == "Prefix" and "/ws/rooms/x/".startswith(path["path"]):
                    covered = True
            assert covered, f"{rule['host']}: no path sends /ws/rooms/ to the nodes"
        annotations = ingress["metadata"].get("annotations") or {}
        if "nginx" in (ingress["spec"].get("ingressClassName") or ""):
            # ingress-nginx closes a proxied connection idle for 60 s by default.
            timeout = int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"])
            assert timeout >= 600


def test_service_monitor_scrapes_each_node_once(rendered: Rendered) -> None:
    for monitor in rendered.of_kind("ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        selected = [
            s for s in rendered.of_kind("Service") if _selects(selector, s["metadata"]["labels"])
        ]
        assert [s["metadata"]["name"] for s in selected] == [
            rendered.deployment["metadata"]["name"]
        ]
        ports = {p["name"] for p in selected[0]["spec"]["ports"]}
        assert all(endpoint["port"] in ports for endpoint in monitor["spec"]["endpoints"])


# ------------------------------------------------------------------------------------------------
# Redis
# ------------------------------------------------------------------------------------------------


def test_bundled_redis_keeps_an_append_only_file_on_a_volume(rendered: Rendered) -> None:
    statefulsets = rendered.of_kind("StatefulSet")
    env = rendered.env(rendered.deployment, "chat", POD)
    if not statefulsets:
        assert "REDIS_URL" in env.names
        return
    (redis,) = statefulsets
    assert redis["spec"]["replicas"] == 1
    args = container(redis, "redis")["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--dir") + 1] == "/data"
    claims = {c["metadata"]["name"] for c in redis["spec"].get("volumeClaimTemplates", [])}
    mounts = {m["mountPath"]: m["name"] for m in container(redis, "redis")["volumeMounts"]}
    assert mounts["/data"] in claims, "the AOF must live on a PersistentVolume"
    assert rendered.get("Service", redis["spec"]["serviceName"]) is not None
