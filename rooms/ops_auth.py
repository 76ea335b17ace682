"""Who may read the operations endpoints (``/metrics``, ``/api/cluster/``).

They name every node and every room's owner, so they answer only:

- a loopback client: a process on the node's own host, talking to it directly, naming a host in
  ALLOWED_HOSTS. A request that carries a forwarding header came through a proxy for someone
  else, so it is not loopback even when the proxy runs on the same host; and a browser on the
  host sent to a rebound DNS name (a foreign Host) is not trusted either;
- a logged-in staff session;
- anyone with ``Authorization: Bearer $CHAT_OPS_TOKEN``, when that token is set (Prometheus).

Everyone else gets 403 JSON. ``/healthz`` and ``/readyz`` stay open: they tell nothing.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
from collections.abc import Awaitable, Callable

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse, JsonResponse

View = Callable[[HttpRequest], Awaitable[HttpResponse]]

FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def is_loopback_client(request: HttpRequest) -> bool:
    if any(header in request.META for header in FORWARDING_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not address.is_loopback:
        return False
    try:
        request.get_host()  # GET requests are otherwise never checked against ALLOWED_HOSTS
    except DisallowedHost:
        return False
    return True


def has_ops_token(request: HttpRequest) -> bool:
    """``Authorization: Bearer TOKEN`` with this node's ``CHAT_OPS_TOKEN`` (never when unset)."""
    token = settings.CHAT_OPS_TOKEN
    if not token:
        return False
    scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


async def is_staff_session(request: HttpRequest) -> bool:
    auser = getattr(request, "auser", None)  # absent before AuthenticationMiddleware
    if auser is None:
        return False
    user = await auser()
    return bool(user.is_active and user.is_staff)


async def ops_allowed(request: HttpRequest) -> bool:
    return is_loopback_client(request) or has_ops_token(request) or await is_staff_session(request)


def forbidden() -> JsonResponse:
    detail = "operations endpoint: loopback, a staff session, or Authorization: Bearer <ops token>"
    return JsonResponse({"error": "forbidden", "code": "forbidden", "detail": detail}, status=403)


def ops_endpoint(view: View) -> View:
    @functools.wraps(view)
    async def guarded(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if not await ops_allowed(request):
            return forbidden()
        return await view(request, *args, **kwargs)

    return guarded
