"""Answer the probes before anything else looks at the request.

Kubernetes probes and Prometheus address a pod by its IP, which is in no ALLOWED_HOSTS list;
Django's host check would answer them 400. ``/healthz`` and ``/readyz`` serve no user data and
take no input, so they skip the host check (and sessions, CSRF, auth) entirely.

``/metrics`` skips it only for a scrape that proves itself with the ops token (what the chart's
ServiceMonitor sends). Any other request for it takes the normal path: the host check (a
loopback client is trusted, so a rebound DNS name must not reach it), then the ops rule of
rooms/ops_auth.py (loopback, staff session, or token).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from rooms import views_api
from rooms.ops_auth import has_ops_token

View = Callable[[HttpRequest], Awaitable[HttpResponse]]

PROBES: dict[str, View] = {
    "/healthz": views_api.healthz,
    "/readyz": views_api.readyz,
}
SCRAPES: dict[str, View] = {
    "/metrics": views_api.metrics_view,
}


class ProbeMiddleware:
    async_capable = True
    sync_capable = False

    def __init__(self, get_response: View) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        view = PROBES.get(request.path)
        if view is None and has_ops_token(request):
            view = SCRAPES.get(request.path)
        if view is not None:
            return await view(request)
        return await self.get_response(request)
