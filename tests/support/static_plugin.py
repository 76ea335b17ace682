"""Static files for the test session: tests run production settings (DEBUG off), whose hashed
static names need collectstatic's manifest. Collected once per session into a private folder
(CHAT_STATIC_ROOT, set before Django reads its settings) that node processes share."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import pytest

_made: list[str] = []


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: Any, args: Any) -> None:
    if os.environ.get("CHAT_STATIC_ROOT", "").strip():
        return  # the caller's (e.g. collected already): used as it is
    folder = tempfile.mkdtemp(prefix="chat-static-")
    _made.append(folder)
    os.environ["CHAT_STATIC_ROOT"] = folder


def collect_static() -> None:
    """collectstatic into STATIC_ROOT unless its manifest is there already."""
    from django.core.management import call_command

    from chatsite.static_files import missing_manifest

    if missing_manifest() is not None:
        call_command("collectstatic", interactive=False, verbosity=0)


def pytest_unconfigure(config: pytest.Config) -> None:
    while _made:
        shutil.rmtree(_made.pop(), ignore_errors=True)
