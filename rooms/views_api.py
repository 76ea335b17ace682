"""The HTTP API and the operational endpoints of CONTRACT.md (async: they use the runtime)."""

from __future__ import annotations

import logging
import re

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from cluster.errors import CommandError
from cluster.log import LogRange
from cluster.runtime import ClusterRuntime

from . import archive, metrics, selectors
from .models import SLUG_PATTERN
from .ops_auth import ops_endpoint
from .protocol import parse_seq
from .runtime import current_runtime

logger = logging.getLogger("rooms.views_api")

EVENTS_PAGE_MAX = 1000
SEARCH_PAGE_MAX = 100
SEARCH_QUERY_MAX = 200  # characters of ``q``
_SLUG = re.compile(SLUG_PATTERN.removeprefix("^").removesuffix("$"))


def _running() -> ClusterRuntime | JsonResponse:
    """This node's runtime, or the 503 to answer when it is not running."""
    runtime = current_runtime()
    if runtime is None or runtime.state == "stopped":
        return _error(503, "unavailable", "node not running")
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
    if not runtime.accepting_sockets:  # starting, draining or stopped
        return JsonResponse({"status": runtime.state, "node": runtime.node}, status=503)
    if not runtime.ready:
        return JsonResponse({"status": "redis_unreachable", "node": runtime.node}, status=503)
    return JsonResponse({"status": "ready", "node": runtime.node})


@require_GET
async def rooms_list(request: HttpRequest) -> JsonResponse:
    runtime = _running()
    if isinstance(runtime, JsonResponse):
        return runtime
    # Paginated (``?page=``, 1-based); ``next`` is the next page's number, or null.
    try:
        number = parse_seq("page", request.GET.get("page", "1"))
        if number < 1:
            raise CommandError("bad_request", "page must be at least 1")
    except CommandError as exc:
        return _error(400, exc.code, exc.detail)
    rooms, more = await selectors.room_apage(number)
    slugs = [room.slug for room in rooms]
    try:
        online = await runtime.online(slugs)
        owners = await selectors.room_owners(runtime.redis, slugs)  # one round trip
    except Exception:  # Redis unreachable or failing over: the client retries
        logger.warning("rooms list: Redis could not be read", exc_info=True)
        return _error(503, "unavailable", "room owners cannot be read now; try again")
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
            ],
            "next": number + 1 if more else None,
        }
    )


def _live_owner(runtime: ClusterRuntime, node: str | None) -> str | None:
    if node is not None and runtime.membership.is_live(node):
        return node
    return None


@require_GET
async def room_events(request: HttpRequest, slug: str) -> JsonResponse:
    runtime = _running()
    if isinstance(runtime, JsonResponse):
        return runtime
    if not _SLUG.fullmatch(slug):
        # Not a slug at all (too long, "%00", "é"): no such room, and no database round trip
        # with text a database may refuse (PostgreSQL and NUL).
        return _error(404, "not_found", f"no room {slug[:60]!r}")
    room = await selectors.room_aget(slug)
    if room is None or room.archived:  # an archived room's history is nobody's to read
        return _error(404, "not_found", f"no room {slug!r}")
    try:
        after, before, limit = _page_params(request)
    except CommandError as exc:
        return _error(400, exc.code, exc.detail)
    try:
        if before is None:
            page = await runtime.events(slug, after=after, limit=limit)
        else:
            after, page = await _page_before(runtime, slug, after, before, limit)
    except Exception:  # Redis unreachable or failing over: the client retries
        logger.warning("events of %s: the log could not be read", slug, exc_info=True)
        return _error(503, "unavailable", "the room's log cannot be read now; try again")
    found = page.events if before is None else [e for e in page.events if e["seq"] < before]
    body = {"room": slug, "events": found, "last_seq": page.last_seq}
    if page.first_available > after + 1:
        body["first_available"] = page.first_available
    return JsonResponse(body)


async def _page_before(
    runtime: ClusterRuntime, slug: str, after: int, before: int, limit: int
) -> tuple[int, LogRange]:
    """The ``limit`` events just below ``before`` (and above ``after``). Seqs have no gaps
    (guarantee 1), so they are the seqs above ``before - 1 - limit``; a ``before`` past the end
    means the newest events, which takes a second read once the end is known."""
    low = max(after, before - 1 - limit)
    page = await runtime.events(slug, after=low, limit=limit)
    if before > page.last_seq + 1 and low > max(after, page.last_seq - limit):
        low = max(after, page.last_seq - limit)
        page = await runtime.events(slug, after=low, limit=limit)
    return low, page


@require_GET
async def room_search(request: HttpRequest, slug: str) -> JsonResponse:
    """``?q=words`` (every word, case-insensitive) in the room's archived messages, newest
    first; ``before=`` a seq pages on (``next_before`` of the last page), ``limit=`` at most
    ``SEARCH_PAGE_MAX``. What the archive does not hold yet (its lag) is not found."""
    if not _SLUG.fullmatch(slug):
        return _error(404, "not_found", f"no room {slug[:60]!r}")
    room = await selectors.room_aget(slug)
    if room is None or room.archived:
        return _error(404, "not_found", f"no room {slug!r}")
    query = request.GET.get("q", "")
    words = query.split()
    if not words or len(query) > SEARCH_QUERY_MAX or "\x00" in query:
        return _error(
            400, "bad_request", f"q must hold 1 to {SEARCH_QUERY_MAX} characters of words"
        )
    try:
        raw_before = request.GET.get("before")
        before = None if raw_before is None else parse_seq("before", raw_before)
        limit = parse_seq("limit", request.GET.get("limit", "20"))
        if limit < 1:
            raise CommandError("bad_request", "limit must be at least 1")
    except CommandError as exc:
        return _error(400, exc.code, exc.detail)
    found = await archive.search(slug, words, before=before, limit=min(limit, SEARCH_PAGE_MAX))
    full = len(found) == min(limit, SEARCH_PAGE_MAX)
    return JsonResponse(
        {
            "room": slug,
            "q": query,
            "results": found,
            "next_before": found[-1]["seq"] if full else None,
        }
    )


def _page_params(request: HttpRequest) -> tuple[int, int | None, int]:
    """``after`` (default 0), ``before`` (optional) and ``limit`` (default and at most
    ``EVENTS_PAGE_MAX``; more is served as that many), each a bounded whole number."""
    after = parse_seq("after", request.GET.get("after", "0"))
    raw_before = request.GET.get("before")
    before = None if raw_before is None else parse_seq("before", raw_before)
    limit = parse_seq("limit", request.GET.get("limit", str(EVENTS_PAGE_MAX)))
    if limit < 1:
        raise CommandError("bad_request", "limit must be at least 1")
    return after, before, min(limit, EVENTS_PAGE_MAX)


def _error(status: int, code: str, detail: str) -> JsonResponse:
    # ``error`` is what this API always answered; ``code`` is the contract's name for it.
    return JsonResponse({"error": code, "code": code, "detail": detail}, status=status)


@require_GET
@ops_endpoint
async def cluster(request: HttpRequest) -> HttpResponse:
    runtime = _running()
    if isinstance(runtime, JsonResponse):
        return runtime
    return JsonResponse(await runtime.cluster_view())


@require_GET
@ops_endpoint
async def metrics_view(request: HttpRequest) -> HttpResponse:
    body, content_type = metrics.render(current_runtime())
    return HttpResponse(body, content_type=content_type)
