"""Project-level checks: migrations are complete; settings refuse malformed environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.django_db
def test_no_missing_migrations() -> None:
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CHAT_RATE_LIMIT", "fast"),
        ("CHAT_RATE_LIMIT", "0/10"),
        ("CHAT_RATE_LIMIT", "5/0"),
        ("CHAT_LEASE_TTL_MS", "soon"),
        ("CHAT_LEASE_TTL_MS", "10"),
        ("CHAT_ALLOW_GUESTS", "maybe"),
        ("CHAT_HISTORY_LIMIT", "-5"),
        ("CHAT_LOGIN_RATE_LIMIT", "often"),
        ("CHAT_ALLOW_SQLITE", "please"),
        ("DJANGO_SECURE_HSTS_SECONDS", "-1"),
        ("DJANGO_DEBUG", "sometimes"),
        ("CHAT_LOG_JSON", "maybe"),
        ("CHAT_LOG_JSON", "2"),
    ],
)
def test_malformed_setting_stops_with_its_name(name: str, value: str, tmp_path: Path) -> None:
    env = {**os.environ, name: value, "CHAT_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={**env, "DJANGO_SETTINGS_MODULE": "chatsite.settings"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert name in result.stderr


def test_settings_parse_rate_limit() -> None:
    from chatsite.settings import parse_rate_limit

    assert parse_rate_limit("20/10") == (20, 10.0)
    assert parse_rate_limit(" 5/0.5 ") == (5, 0.5)
    for bad in ("", "20", "20/", "/10", "a/b", "1/2/3"):
        with pytest.raises(ValueError, match="CHAT_RATE_LIMIT"):
            parse_rate_limit(bad)


def test_createroom_is_idempotent_and_refuses_bad_slugs(tmp_path: Path) -> None:
    env = {**os.environ, "CHAT_DATA_DIR": str(tmp_path), "DATABASE_URL": ""}
    manage = [sys.executable, str(ROOT / "manage.py")]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*manage, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )

    assert run("migrate", "-v0").returncode == 0
    first = run("createroom", "general", "--name", "General")
    assert first.returncode == 0 and "created" in first.stdout
    again = run("createroom", "general")
    assert again.returncode == 0 and "exists" in again.stdout
    for bad in ("Bad Slug", "x-", "a" * 51, "{room}", "x_y"):
        refused = run("createroom", bad)
        assert refused.returncode != 0 and "lower-case" in refused.stderr


def test_scripts_chat_makes_a_dev_superuser_with_a_new_password_each_run(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("devcluster", ROOT / "scripts" / "devcluster.py")
    assert spec is not None and spec.loader is not None
    devcluster = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(devcluster)
    env = {**os.environ, "CHAT_DATA_DIR": str(tmp_path), "DATABASE_URL": "", "DJANGO_DEBUG": "1"}
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=ROOT, check=True, timeout=120)
    first = devcluster.dev_admin(manage, env)
    second = devcluster.dev_admin(manage, env)
    assert first != second and len(second) >= 16
    check = (
        "import os; from django.contrib.auth import authenticate; "
        "u = authenticate(username='dev-admin', password=os.environ['PW']); "
        "print(bool(u and u.is_superuser and u.is_staff))"
    )

    def logs_in(password: str) -> str:
        result = subprocess.run(
            [*manage, "shell", "-v0", "-c", check],
            env={**env, "PW": password}, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return result.stdout.strip()

    assert logs_in(second) == "True"
    assert logs_in(first) == "False"  # the previous run's password no longer works
