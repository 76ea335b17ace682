"""Django settings, read from the environment (the README lists every variable).

Every variable the project reads is named in ``ENVIRONMENT`` below, so that the helm chart's
tests can check that the chart sets only variables that exist here.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import dj_database_url

from chatsite.channel_layers import channel_layers_for
from chatsite.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent
# Templates and static files live inside the package, so an installed wheel carries them.
PACKAGE_DIR = Path(__file__).resolve().parent

# name -> one-line meaning; the single list of what this project reads from the environment.
ENVIRONMENT: dict[str, str] = {
    "REDIS_URL": "redis:// or rediss:// URL; empty starts an embedded Redis",
    "DATABASE_URL": "database URL; empty uses SQLite in CHAT_DATA_DIR",
    "CHAT_NODE_NAME": "unique node name (default hostname-pid)",
    "CHAT_LEASE_TTL_MS": "how long a silent node keeps its rooms",
    "CHAT_DRAIN_TIMEOUT_S": "upper bound for a graceful drain",
    "CHAT_ALLOW_GUESTS": "guests may join with ?name=",
    "CHAT_HISTORY_LIMIT": "durable events kept per room in Redis at least",
    "CHAT_RATE_LIMIT": "N/S: at most N commands per S seconds per user per room",
    "CHAT_SEND_TIMEOUT_MS": "how long a node retries a command while its room changes owner",
    "CHAT_ROOM_IDLE_S": "idle rooms are passivated after this long",
    "CHAT_SOCKET_BUFFER_BYTES": "unsent bytes one socket may hold before it is closed with 1013",
    "CHAT_MAX_SOCKETS_PER_USER": "sockets one principal may hold on a node; more get 4429",
    "CHAT_MAX_SOCKETS_PER_ADDRESS": "sockets one client address may hold on a node; more get 4429",
    "CHAT_DATA_DIR": "where the embedded Redis and SQLite keep their files",
    "CHAT_LOG_LEVEL": "log level of the chat loggers",
    "CHAT_LOG_JSON": "true: one JSON object per log line, with node, room and conn fields",
    "DJANGO_SECRET_KEY": "secret key; production must set it",
    "DJANGO_DEBUG": "true/false",
    "DJANGO_ALLOWED_HOSTS": "comma-separated host names",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "comma-separated origins allowed for forms and sockets",
    "DJANGO_SECURE_COOKIES": "session and CSRF cookies only over HTTPS (default: on unless DEBUG)",
    "DJANGO_SECURE_SSL_REDIRECT": "redirect plain HTTP to HTTPS (default: on unless DEBUG)",
    "DJANGO_SECURE_HSTS_SECONDS": "HSTS max-age in seconds (default one year; 0 in DEBUG)",
    "DJANGO_SECURE_PROXY_SSL_HEADER": "header a trusted proxy sets to https (X-Forwarded-Proto)",
    "CHAT_OPS_TOKEN": "bearer token for /metrics and /api/cluster/ from non-loopback clients",
    "CHAT_ALLOW_SQLITE": "with DEBUG off, let a node run on SQLite (one-box installs)",
    "CHAT_LOGIN_RATE_LIMIT": "N/S: failed log-ins per username and address before a wait",
    # identity, moderation and rooms (issue 9, items 1-3)
    "CHAT_RATE_LIMIT_PER_ADDRESS": "N/S: the command rate limit per client address per room",
    "CHAT_TRUSTED_PROXIES": "comma-separated proxy addresses/networks whose X-Forwarded-For counts",
    "CHAT_ROOM_CREATORS": "who may create rooms: users (default), staff or anyone",
    "CHAT_ROOMS_PER_USER": "rooms one user (or guest session) may create",
    # history and the archive (issue 11)
    "CHAT_ARCHIVE_LAG_S": "seconds the database archive may lag the Redis log (bound)",
    "CHAT_RETENTION_DAYS": "days archived messages are kept (empty: forever); prune_history",
    # packaging (issue 12, item 5)
    "CHAT_STATIC_ROOT": "where collectstatic writes and the node serves static files from",
    # beyond one Redis (issue 13)
    "CHAT_REDIS_MIN_REPLICAS": "replicas an append waits for (WAIT) before its ack",
}


def _env(name: str, default: str) -> str:
    assert name in ENVIRONMENT, f"{name} is not declared in ENVIRONMENT"
    value = os.environ.get(name, "")
    return value if value.strip() else default


def _env_bool(name: str, default: bool) -> bool:
    raw = _env(name, "true" if default else "false").strip().lower()
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean (use true or false)")


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = _env(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}")
    return value


def _env_float(name: str, default: float, minimum: float) -> float:
    raw = _env(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not minimum <= value < float("inf"):  # also refuses nan
        raise ValueError(f"{name}={value} must be a finite number of at least {minimum}")
    return value


def parse_retention_days(raw: str, name: str = "CHAT_RETENTION_DAYS") -> int | None:
    """``""`` -> None (keep forever); a whole number of days >= 1; ValueError otherwise."""
    text = raw.strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) < 1 or len(text) > 6:
        raise ValueError(
            f"{name}={raw!r} must be a whole number of days from 1 to 999999 (empty: forever)"
        )
    return int(text)


def _env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in _env(name, default).split(",") if item.strip()]


def parse_rate_limit(raw: str, name: str = "CHAT_RATE_LIMIT") -> tuple[int, float]:
    """``"20/10"`` -> (20, 10.0); raises ValueError with a clear message otherwise."""
    parts = raw.strip().split("/")
    try:
        count, seconds = int(parts[0]), float(parts[1])
        if len(parts) != 2 or count < 1 or seconds <= 0:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"{name}={raw!r} must look like N/S, e.g. 20/10") from None
    return count, seconds


# Fail closed: DEBUG is off unless asked for, and the development key is one that Django's
# deploy checks and ``runnode`` (chatsite/fail_closed.py) both refuse when DEBUG is off.
DEV_SECRET_KEY = "django-insecure-dev-only-secret-key-never-use-in-production"
DEBUG = _env_bool("DJANGO_DEBUG", False)
SECRET_KEY = _env("DJANGO_SECRET_KEY", DEV_SECRET_KEY)
ALLOWED_HOSTS = _env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = _env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

# HTTPS: production-safe unless DEBUG (a laptop serves plain http on localhost).
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = _env_bool("DJANGO_SECURE_COOKIES", not DEBUG)
SECURE_SSL_REDIRECT = _env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
# Probes and scrapes address a pod over plain http by its IP: never redirected.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$", r"^api/cluster/$"]
SECURE_HSTS_SECONDS = _env_int("DJANGO_SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
_proxy_ssl_header = _env("DJANGO_SECURE_PROXY_SSL_HEADER", "")
# Only behind a proxy that sets (overwrites) this header: otherwise clients could claim https.
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _proxy_ssl_header.upper().replace("-", "_"), "https") if _proxy_ssl_header else None
)
# The 500 page (DEBUG) and error mails never show credentials in URLs (chatsite/redact.py).
DEFAULT_EXCEPTION_REPORTER_FILTER = "chatsite.redact.RedactingExceptionReporterFilter"

CHAT_DATA_DIR = Path(_env("CHAT_DATA_DIR", str(BASE_DIR / "var")))
CHAT_REDIS_URL = _env("REDIS_URL", "")
# The Channels layer of the project's own consumers and code (chatsite/channel_layers.py):
# on REDIS_URL; with the embedded Redis, runnode sets it once that Redis is up.
CHANNEL_LAYERS = channel_layers_for(CHAT_REDIS_URL)
CHAT_NODE_NAME = _env("CHAT_NODE_NAME", f"{socket.gethostname()}-{os.getpid()}")
CHAT_LEASE_TTL_MS = _env_int("CHAT_LEASE_TTL_MS", 3000, minimum=300)
CHAT_DRAIN_TIMEOUT_S = _env_int("CHAT_DRAIN_TIMEOUT_S", 20)
CHAT_ALLOW_GUESTS = _env_bool("CHAT_ALLOW_GUESTS", True)
CHAT_HISTORY_LIMIT = _env_int("CHAT_HISTORY_LIMIT", 10000, minimum=100)
CHAT_RATE_LIMIT = parse_rate_limit(_env("CHAT_RATE_LIMIT", "20/10"))
CHAT_SEND_TIMEOUT_MS = _env_int("CHAT_SEND_TIMEOUT_MS", 5000, minimum=100)
# 0: an ack means the master has the event (replication is asynchronous); N: N replicas too.
CHAT_REDIS_MIN_REPLICAS = _env_int("CHAT_REDIS_MIN_REPLICAS", 0, minimum=0)
CHAT_ROOM_IDLE_S = _env_int("CHAT_ROOM_IDLE_S", 300)
CHAT_SOCKET_BUFFER_BYTES = _env_int("CHAT_SOCKET_BUFFER_BYTES", 1048576, minimum=65536)
CHAT_MAX_SOCKETS_PER_USER = _env_int("CHAT_MAX_SOCKETS_PER_USER", 20)
CHAT_MAX_SOCKETS_PER_ADDRESS = _env_int("CHAT_MAX_SOCKETS_PER_ADDRESS", 200)
CHAT_LOG_LEVEL = _env("CHAT_LOG_LEVEL", "INFO").upper()
CHAT_OPS_TOKEN = _env("CHAT_OPS_TOKEN", "")
CHAT_ALLOW_SQLITE = _env_bool("CHAT_ALLOW_SQLITE", False)
CHAT_LOGIN_RATE_LIMIT = parse_rate_limit(
    _env("CHAT_LOGIN_RATE_LIMIT", "5/300"), "CHAT_LOGIN_RATE_LIMIT"
)
CHAT_MAX_BODY = 4000
# identity, moderation and rooms (issue 9, items 1-3)
CHAT_RATE_LIMIT_PER_ADDRESS = parse_rate_limit(
    _env("CHAT_RATE_LIMIT_PER_ADDRESS", "200/10"), "CHAT_RATE_LIMIT_PER_ADDRESS"
)
CHAT_TRUSTED_PROXIES = _env_list("CHAT_TRUSTED_PROXIES", "")
CHAT_ROOM_CREATORS = _env("CHAT_ROOM_CREATORS", "users").strip().lower()
if CHAT_ROOM_CREATORS not in ("users", "staff", "anyone"):
    raise ValueError(f"CHAT_ROOM_CREATORS={CHAT_ROOM_CREATORS!r}: use users, staff or anyone")
CHAT_ROOMS_PER_USER = _env_int("CHAT_ROOMS_PER_USER", 20)
# history and the archive (issue 11): rooms/archive.py
CHAT_ARCHIVE_LAG_S = _env_float("CHAT_ARCHIVE_LAG_S", 5.0, minimum=0.1)
CHAT_RETENTION_DAYS = parse_retention_days(_env("CHAT_RETENTION_DAYS", ""))

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "channels",
    "chatsite",
    "rooms",
]

MIDDLEWARE = [
    "chatsite.middleware.ProbeMiddleware",  # first: probes (and token scrapes) skip host check
    "django.middleware.security.SecurityMiddleware",
    "chatsite.static_files.StaticFilesMiddleware",  # WhiteNoise: before sessions, no DB work
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # First, so the project's admin overrides win over the apps' own (as before the move).
        "DIRS": [PACKAGE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_default_db = f"sqlite:///{CHAT_DATA_DIR / 'chat.sqlite3'}"
if not _env("DATABASE_URL", ""):
    CHAT_DATA_DIR.mkdir(parents=True, exist_ok=True)  # SQLite needs its folder to exist
DATABASES = {"default": dj_database_url.parse(_env("DATABASE_URL", _default_db), conn_max_age=0)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Two nodes share one SQLite file in development: wait for the lock instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# -- static files (WhiteNoise; docs/packaging.md) ---------------------------------------------
# The files are chatsite/static (found as the chatsite app's static folder). With DEBUG off they
# are served from STATIC_ROOT under content-hashed names (cached for a year) and pre-compressed,
# so `collectstatic` must have run (the image does it at build time; runnode refuses to start
# without its manifest). DEBUG serves the source files as they are: no collectstatic needed.
STATIC_URL = "static/"
STATIC_ROOT = Path(_env("CHAT_STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "chatsite.static_files.HashedStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG  # DEBUG: straight from chatsite/static, edits show at once
WHITENOISE_AUTOREFRESH = DEBUG

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

# Logs (chatsite/logs.py): plain lines, or JSON lines with node, room and connection fields.
CHAT_LOG_JSON = _env_bool("CHAT_LOG_JSON", False)
LOGGING = logging_config(json_lines=CHAT_LOG_JSON, level=CHAT_LOG_LEVEL)
