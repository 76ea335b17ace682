"""PostgreSQL for the test suite (loaded from pyproject's addopts: ``-p tests.support.pg_plugin``).

- ``--database=postgres`` runs the in-process tests (pytest-django's test database) on
  PostgreSQL: ``DATABASE_URL`` if it names one, else a server started for the session from the
  ``pgserver`` wheel (tests/support/pg.py), before Django reads its settings.
- Fixtures for tests that run on both databases whatever the option: ``postgres_server`` (one
  per session, started on first use), ``postgres_url`` (a fresh database on it) and
  ``database_url`` (parametrised: a SQLite file, then a fresh PostgreSQL database), for
  ``manage.py`` and ``runnode`` processes (tests/support/nodes.py: ``Cluster(database_url=)``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support.pg import PostgresServer

_started: list[PostgresServer] = []


def names_postgres(url: str | None) -> bool:
    return bool(url) and urlsplit(url or "").scheme in ("postgres", "postgresql", "pgsql")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--database",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="database of the in-process tests: sqlite (default) or postgres (DATABASE_URL's "
        "if it names one, else one started from the pgserver wheel for the session)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: Any, args: Any) -> None:
    # Before pytest-django reads the settings: DATABASES comes from DATABASE_URL.
    if getattr(early_config.known_args_namespace, "database", "sqlite") != "postgres":
        return
    if names_postgres(os.environ.get("DATABASE_URL")):
        return
    server = PostgresServer.start()
    _started.append(server)
    os.environ["DATABASE_URL"] = server.url()


def pytest_unconfigure(config: pytest.Config) -> None:
    while _started:
        _started.pop().stop()


class _Postgres:
    """A PostgreSQL server the tests may create databases on."""

    def __init__(self, url: str) -> None:
        self.url = url

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[_Postgres]:
    """The session's PostgreSQL: DATABASE_URL's server if it names one, else one from the
    pgserver wheel (skipped, saying why, if that is not installed)."""
    named = os.environ.get("DATABASE_URL")
    if names_postgres(named):
        yield _Postgres(str(named))
        return
    if _started:
        yield _Postgres(_started[0].url())
        return
    try:
        server = PostgresServer.start()
    except ImportError as exc:
        pytest.skip(f"no PostgreSQL for this test: {exc}")
    try:
        yield _Postgres(server.url())
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: _Postgres) -> str:
    """A fresh, empty database on the session's PostgreSQL."""
    return postgres_server.create_database(f"chat_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database for node processes, once on each engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session", autouse=True)
def _postgres_test_database_dropped(request: pytest.FixtureRequest) -> Iterator[None]:
    """With ``--database=postgres``: before pytest-django drops the test database, end the
    sessions that threads of asgiref's executors still hold (async ORM calls open one per
    thread and nothing closes them); PostgreSQL refuses to drop a database in use."""
    if request.config.getoption("database") != "postgres":
        yield
        return
    request.getfixturevalue("django_db_setup")
    blocker = request.getfixturevalue("django_db_blocker")
    yield
    from django.db import connection

    with blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    connection.close()
