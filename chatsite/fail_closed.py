"""Production fails closed: with DEBUG off, a node refuses settings that only suit a laptop.

``problems()`` is the one list of refusals. ``runnode`` stops on any of them before it binds a
port, and ``manage.py check --deploy`` reports them as errors, so CI and a node agree.
"""

from __future__ import annotations

from django.conf import settings
from django.core import checks

MIN_SECRET_KEY_LENGTH = 50


def problems() -> list[tuple[str, str]]:
    """(check id, what is wrong and what to set) for every setting unfit for production;
    empty with DEBUG on (development)."""
    if settings.DEBUG:
        return []
    found: list[tuple[str, str]] = []
    key = settings.SECRET_KEY or ""
    if key == settings.DEV_SECRET_KEY or not key:
        found.append(
            (
                "chat.E001",
                "DJANGO_SECRET_KEY is not set (the development key is refused with DEBUG off); "
                "set a random value of 50+ characters, or DJANGO_DEBUG=1 on a laptop",
            )
        )
    elif len(key) < MIN_SECRET_KEY_LENGTH or key.startswith("django-insecure"):
        found.append(
            (
                "chat.E002",
                f"DJANGO_SECRET_KEY is too weak (needs {MIN_SECRET_KEY_LENGTH}+ random characters)",
            )
        )
    if not settings.CHAT_REDIS_URL:
        found.append(
            (
                "chat.E003",
                "REDIS_URL is not set: with DEBUG off a node starts no private embedded Redis "
                "(every node must share one Redis); set REDIS_URL, or DJANGO_DEBUG=1 on a laptop",
            )
        )
    engine = settings.DATABASES["default"]["ENGINE"]
    if engine == "django.db.backends.sqlite3" and not settings.CHAT_ALLOW_SQLITE:
        found.append(
            (
                "chat.E004",
                "DATABASE_URL is not set (SQLite is refused with DEBUG off): point DATABASE_URL at "
                "PostgreSQL, or set CHAT_ALLOW_SQLITE=1 for a one-box install",
            )
        )
    return found


@checks.register(checks.Tags.security, deploy=True)
def check_fail_closed(**_: object) -> list[checks.CheckMessage]:
    return [checks.Error(text, id=check_id) for check_id, text in problems()]
