"""Refuse WebSocket handshakes from foreign origins (HTTP 403, before any upgrade).

The rule is Django's CSRF rule for ``Origin``, applied to the handshake:

- the page's own origin: ``scheme://host[:port]`` equal to the handshake's, where the host
  (the ``Host`` header) passes ``ALLOWED_HOSTS`` and the scheme is https exactly when the
  socket is secure (``wss``, or ``SECURE_PROXY_SSL_HEADER`` from a TLS proxy). A DNS name
  rebound to the node's address carries a Host outside ``ALLOWED_HOSTS``: refused, even
  though Origin and Host agree. A page on another port or scheme of an allowed host: refused;
- one of ``CSRF_TRUSTED_ORIGINS``, scheme and port as written there (``https://*.example.com``
  covers subdomains, as for forms).

Clients that are not browsers send no Origin and are not subject to the same-origin policy:
allowed (scripts and API clients keep working).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest
from django.utils.http import is_same_domain

ASGIApp = Any


class HandshakeRequest(HttpRequest):
    """The handshake as an HttpRequest, for Django's own Host and scheme rules."""

    def __init__(self, scope: dict[str, Any]) -> None:
        super().__init__()
        for raw_name, raw_value in scope.get("headers", []):
            name = raw_name.decode("latin-1").upper().replace("-", "_")
            self.META[f"HTTP_{name}"] = raw_value.decode("latin-1")
        server = scope.get("server") or (None, None)
        self.META["SERVER_NAME"] = str(server[0] or "")
        self.META["SERVER_PORT"] = str(server[1] or "")
        self._secure = scope.get("scheme") == "wss"

    def _get_scheme(self) -> str:
        return "https" if self._secure else "http"


def origin_allowed(request: HttpRequest) -> bool:
    origin = request.META.get("HTTP_ORIGIN")
    if origin is None:
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if _is_own_origin(request, origin):
        return True
    trusted = settings.CSRF_TRUSTED_ORIGINS
    if origin in {o for o in trusted if "*" not in o}:
        return True
    subdomains = [urlsplit(o) for o in trusted if "*" in o]
    return any(
        t.scheme == parts.scheme and is_same_domain(parts.netloc, t.netloc.removeprefix("*"))
        for t in subdomains
    )


def _is_own_origin(request: HttpRequest, origin: str) -> bool:
    try:
        host = request.get_host()  # raises unless the Host passes ALLOWED_HOSTS
    except DisallowedHost:
        return False
    return origin.lower() == f"{request.scheme}://{host}".lower()


class OriginCheck:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if not origin_allowed(HandshakeRequest(scope)):
            denier = WebsocketDenier()
            return await denier(scope, receive, send)
        return await self.app(scope, receive, send)
