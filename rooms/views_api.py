"""The HTTP API and the operational endpoints of CONTRACT.md (async: they use the runtime)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from cluster.registry import Lease
from cluster.runtime import ClusterRuntime

from . import metrics, selectors
from .models import Room
from .runtime import current_runtime

EVENTS_PAGE_MAX = 1000


def _running() -> ClusterRuntime | JsonResponse:
    """This node's runtime, or the 503 to answer when it is not running."""
    runtime = current_runtime()
    if runtime is None or runtime.state == "stopped":
        return JsonResponse({"error": "unavailable", "detail": "node not running"}, status=503)
    return runtime


@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    runtime = current_runtime()
    node = runtime.node if runtime is not None else None
    return JsonResponse({"status": "ok", "node": node})


@require_GET
async def readyz(request: HttpRequest) -> JsonResponse:
    runtime = current_runtime()
    if runtime is None:
        return JsonResponse({"status": "unavailable", "node": None}, status=503)
    if runtime.state != "running":
        return JsonResponse({"status": runtime.state, "node": runtime.node}, status=503)
    if not runtime.ready:
        return JsonResponse({"status": "redis_unreachable", "node": runtime.node}, status=503)
    return JsonResponse({"status": "ready", "node": runtime.node})


@require_GET
async def rooms_list(request: HttpRequest) -> JsonResponse:
    runtime = _running()
    if isinstance(runtime, JsonResponse):
        return runtime
    rooms = [room async for room in Room.objects.active().order_by("name", "slug")]
    slugs = [room.slug for room in rooms]
    online = await runtime.online(slugs)
    owners = {slug: await runtime.registry.lookup(slug) for slug in slugs}
    return JsonResponse(
        {
            "rooms": [
                {
                    "slug": room.slug,
                    "name": room.name,
                    "owner": _live_owner(runtime, owners[room.slug]),
                    "online": len(online[room.slug]),
                }
                for room in rooms
            ]
        }
    )


def _live_owner(runtime: ClusterRuntime, lease: Lease | None) -> str | None:
    if lease is not None and runtime.membership.is_live(lease.node):
        return lease.node
    return None


@require_GET
async def room_events(request: HttpRequest, slug: str) -> JsonResponse:
    runtime = _running()
    if isinstance(runtime, JsonResponse):
        return runtime
    room = await selectors.room_aget(slug)
    if room is None:
        return JsonResponse({"error": "not_found", "detail": f"no room {slug!r}"}, status=404)
    try:
        after = int(request.GET.get("after", "0"))
        limit = int(request.GET.get("limit", str(EVENTS_PAGE_MAX)))
        if after < 0 or limit < 1:
            raise ValueError
    except ValueError:
        return JsonResponse(
            {"error": "bad_request", "detail": "after must be >= 0 and limit >= 1 (integers)"},
            status=400,
        )
    page = await runtime.events(slug, after=after, limit=min(limit, EVENTS_PAGE_MAX))
    body = {"room": slug, "events": page.events, "last_seq": page.last_seq}
    if page.first_available > after + 1:
        body["first_available"] = page.first_available
    return JsonResponse(body)


@require_GET
async def cluster(request: HttpRequest) -> JsonResponse:
    runtime = _running()
    if isinstance(runtime, JsonResponse):
        return runtime
    return JsonResponse(await runtime.cluster_view())


@require_GET
async def metrics_view(request: HttpRequest) -> HttpResponse:
    body, content_type = metrics.render(current_runtime())
    return HttpResponse(body, content_type=content_type)
