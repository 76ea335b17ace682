"""Refuse WebSocket handshakes from foreign origins (HTTP 403, before any upgrade).

A browser always sends ``Origin``; it is allowed when it is the page's own origin (same host as
the ``Host`` header), one of ``CSRF_TRUSTED_ORIGINS``, or a host in ``ALLOWED_HOSTS``. Clients
that are not browsers send no Origin and are not subject to the same-origin policy: allowed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import validate_host

ASGIApp = Any


def origin_allowed(origin: str | None, host_header: str | None) -> bool:
    if origin is None:
        return True
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if host_header is not None and parts.netloc.lower() == host_header.lower():
        return True
    return validate_host(parts.hostname, [h for h in settings.ALLOWED_HOSTS if h != "*"])


class OriginCheck:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not origin_allowed(headers.get("origin"), headers.get("host")):
            denier = WebsocketDenier()
            return await denier(scope, receive, send)
        return await self.app(scope, receive, send)
