"""Browser tests: Playwright (the Python package) driving Debian's chromium against real
``runnode`` processes on a real Redis.

The set-up installs what is missing: ``apt-get install -y chromium`` when /usr/bin/chromium is
absent and we are root with apt-get; ``pip install playwright`` when the package is absent.
It never runs ``playwright install`` (the browser is the system's). Where it cannot install,
the tests skip and say why. Screenshots of the key steps go to ``ARTIFACTS`` (git-ignored),
printed at the start of the session.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.balancer import Balancer
from tests.support.nodes import Cluster

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
INSTALL_TIMEOUT_S = 900
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


def _ensure_chromium() -> str | None:
    """None when /usr/bin/chromium is there (installed now if need be), else why not."""
    if CHROMIUM.exists():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get)"
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        if command[1] == "install" and result.returncode != 0:
            return f"apt-get install -y chromium failed:\n{result.stderr[-2000:]}"
    return None if CHROMIUM.exists() else f"{CHROMIUM} still missing after apt-get install"


def _ensure_playwright() -> str | None:
    try:
        importlib.import_module("playwright.sync_api")
        return None
    except ImportError:
        pass
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "playwright>=1.45,<2"],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    if result.returncode != 0:
        return f"pip install playwright failed:\n{result.stderr[-2000:]}"
    importlib.invalidate_caches()
    try:
        importlib.import_module("playwright.sync_api")
    except ImportError as exc:
        return f"playwright installed but not importable: {exc}"
    return None


# Module-scoped: Playwright's sync API runs an event loop on this thread while it lives, and
# every asyncio test after it would find that loop running ("cannot be called from a running
# event loop"); it must be stopped before pytest moves on to other modules.
@pytest.fixture(scope="module")
def playwright_session(request: pytest.FixtureRequest) -> Iterator[Any]:
    reason = _ensure_chromium() or _ensure_playwright()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import expect, sync_playwright

    # Two cores shared with other work: a step may take seconds; a hang still fails.
    expect.set_options(timeout=10_000)

    ARTIFACTS.mkdir(exist_ok=True)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"browser test screenshots: {ARTIFACTS}")
    with sync_playwright() as p:
        yield p


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(redis_url, tmp_path, CHAT_LEASE_TTL_MS="1500")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def balancer_factory() -> Iterator[Callable[[list[int]], Balancer]]:
    made: list[Balancer] = []

    def make(ports: list[int]) -> Balancer:
        made.append(Balancer(ports).start())
        return made[-1]

    yield make
    for balancer in made:
        balancer.stop()


@pytest.fixture
def browser_factory(playwright_session: Any, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """A new browser (its own chromium and a fresh user-data-dir) per call; returns its page."""
    contexts: list[Any] = []

    def make(name: str, viewport: dict[str, int] = DESKTOP) -> Any:
        profile = tmp_path / f"profile-{name}"
        context = playwright_session.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=viewport,
            locale="en-GB",
        )
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.pages[0] if context.pages else context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.js_errors = errors  # checked by the tests: a script error is a failure
        return page

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Callable[[Any, str], None]:
    """Save a screenshot of ``page`` as ARTIFACTS/<test>-<step>.png."""
    test = request.node.name

    def save(page: Any, step: str) -> None:
        page.screenshot(path=str(ARTIFACTS / f"{test}-{step}.png"), full_page=True)

    return save
