"""The browser tests' set-up: where it cannot install chromium it says why (and the tests skip
with that reason), and it never tries what cannot work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.browser import conftest


def test_missing_chromium_without_root_gives_a_reason(monkeypatch: Any, tmp_path: Path) -> None:
    monkeypatch.setattr(conftest, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setattr(conftest.os, "geteuid", lambda: 1000)
    ran: list[Any] = []
    monkeypatch.setattr(conftest.subprocess, "run", lambda *a, **k: ran.append(a))

    reason = conftest._ensure_chromium()

    assert reason is not None and "needs root and apt-get" in reason
    assert ran == [], "nothing is attempted"


def test_missing_chromium_without_apt_gives_a_reason(monkeypatch: Any, tmp_path: Path) -> None:
    monkeypatch.setattr(conftest, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setattr(conftest.os, "geteuid", lambda: 0)
    monkeypatch.setattr(conftest.shutil, "which", lambda name: None)

    reason = conftest._ensure_chromium()

    assert reason is not None and "cannot be installed here" in reason


def test_present_chromium_needs_nothing(monkeypatch: Any, tmp_path: Path) -> None:
    present = tmp_path / "chromium"
    present.touch()
    monkeypatch.setattr(conftest, "CHROMIUM", present)
    monkeypatch.setattr(conftest.subprocess, "run", lambda *a, **k: 1 / 0)

    assert conftest._ensure_chromium() is None
