"""The Django Channels tutorial's chat project, cut to what its chat needs: the peer the benchmark
drives. ``CHANNEL_LAYER`` picks the channels-redis layer (``core`` or ``pubsub``); ``REDIS_URL``
says where Redis is. Everything else is the tutorial's defaults (capacity 100, expiry 60 s)."""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "benchmark-peer-" + "x" * 50  # loopback-only benchmark peer, never deployed
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "chat",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "tutorial_site.urls"
ASGI_APPLICATION = "tutorial_site.asgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("PEER_SQLITE", str(BASE_DIR / "peer.sqlite3")),
    }
}
USE_TZ = True

_LAYERS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": _LAYERS[os.environ.get("CHANNEL_LAYER", "core")],
        "CONFIG": {"hosts": [os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")]},
    }
}
