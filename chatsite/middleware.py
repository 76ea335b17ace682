"""Answer the probe and scrape endpoints before anything else looks at the request.

Kubernetes probes and Prometheus address a pod by its IP, which is in no ALLOWED_HOSTS list;
Django's host check would answer them 400. These three endpoints serve no user data and take no
input, so they skip the host check (and sessions, CSRF, auth) entirely.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from rooms import views_api

PROBES: dict[str, Callable[[HttpRequest], Awaitable[HttpResponse]]] = {
    "/healthz": views_api.healthz,
    "/readyz": views_api.readyz,
    "/metrics": views_api.metrics_view,
}


class ProbeMiddleware:
    async_capable = True
    sync_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponse]]) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        view = PROBES.get(request.path)
        if view is not None:
            return await view(request)
        return await self.get_response(request)
