"""Failed log-ins are limited per username and client address (``CHAT_LOGIN_RATE_LIMIT``, N/S).

After N failures for one username from one address within S seconds (counted from the first),
that pair is refused without even checking the password until the window ends, with an error
that says how long to wait. A success clears the count. Counts live in the cluster's Redis so
that every node sees them (a password guesser cannot spread over nodes); when Redis cannot be
reached, each node counts in its own memory instead of not counting at all.

Both log-in pages use it: the site's (``LoginForm``) and the admin's (``AdminLoginForm``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any

import redis
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from cluster.keys import PREFIX

from . import identity, redis_admin

logger = logging.getLogger("rooms.login_throttle")

REDIS_ERRORS = (redis.RedisError, OSError, RuntimeError)


def _key(username: str, address: str) -> str:
    # Hashed: the key names no username, and odd characters cannot shape it.
    digest = hashlib.sha256(f"{username.casefold()}\n{address}".encode()).hexdigest()[:32]
    return f"{PREFIX}:login-failures:{digest}"


class _LocalCounts:
    """The fallback: counts in this process only, while Redis is unreachable."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (failures, window end)

    def get(self, key: str) -> tuple[int, float]:
        with self._lock:
            count, ends = self._counts.get(key, (0, 0.0))
            if ends <= time.monotonic():
                self._counts.pop(key, None)
                return 0, 0.0
            return count, ends - time.monotonic()

    def add(self, key: str, window: float) -> None:
        with self._lock:
            count, ends = self._counts.get(key, (0, 0.0))
            if ends <= time.monotonic():
                count, ends = 0, time.monotonic() + window
            self._counts[key] = (count + 1, ends)

    def clear(self, key: str) -> None:
        with self._lock:
            self._counts.pop(key, None)


_local = _LocalCounts()


def wait_seconds(username: str, address: str) -> int:
    """How long this pair must wait before its next attempt (0: it may try now)."""
    limit, _ = settings.CHAT_LOGIN_RATE_LIMIT
    key = _key(username, address)
    try:
        r = redis_admin.client()
        pipe = r.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        raw, ttl_ms = pipe.execute()
        count, remaining = int(raw or 0), max(0, int(ttl_ms)) / 1000
    except REDIS_ERRORS as exc:
        logger.warning("login throttle: Redis unreachable (%s); counting on this node", exc)
        count, remaining = _local.get(key)
    return max(1, round(remaining + 0.5)) if count >= limit else 0


def record_failure(username: str, address: str) -> None:
    _, window = settings.CHAT_LOGIN_RATE_LIMIT
    key = _key(username, address)
    try:
        pipe = redis_admin.client().pipeline(transaction=False)
        pipe.set(key, 0, px=int(window * 1000), nx=True)  # the window starts at the first
        pipe.incr(key)
        pipe.execute()
    except REDIS_ERRORS:
        _local.add(key, window)


def clear(username: str, address: str) -> None:
    key = _key(username, address)
    _local.clear(key)
    try:
        redis_admin.client().delete(key)
    except REDIS_ERRORS:
        pass


def client_address(request: HttpRequest | None) -> str:
    """The client's address, as the rate limits see it: behind a trusted proxy
    (CHAT_TRUSTED_PROXIES), the address it forwarded for."""
    if request is None:
        return ""
    scope = getattr(request, "scope", None)  # an ASGI request (every node serves ASGI)
    if scope is not None:
        return identity.client_address(scope)
    return str(request.META.get("REMOTE_ADDR", ""))


class ThrottledLogin:
    """Mixin for Django's authentication forms: refuse a throttled pair before checking the
    password, count failures, clear the count on success."""

    request: HttpRequest | None
    cleaned_data: dict[str, Any]
    throttled = False
    error_messages: dict[str, str]

    def clean(self) -> dict[str, Any]:
        username = str(self.cleaned_data.get("username") or "")
        address = client_address(self.request)
        wait = wait_seconds(username, address)
        if wait:
            self.throttled = True
            raise ValidationError(
                "Too many failed log-in attempts for this account from your address. "
                "Try again in %(wait)s seconds.",
                code="throttled",
                params={"wait": wait},
            )
        try:
            cleaned: dict[str, Any] = super().clean()  # type: ignore[misc]
        except ValidationError as exc:
            if getattr(exc, "code", None) == "invalid_login":
                record_failure(username, address)
            raise
        clear(username, address)
        return cleaned


class LoginForm(ThrottledLogin, AuthenticationForm):
    pass


class AdminLoginForm(ThrottledLogin, AdminAuthenticationForm):
    pass
