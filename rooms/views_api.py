"""The HTTP API and the operational endpoints of CONTRACT.md (async: they use the runtime)."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from cluster.errors import CommandError
from cluster.log import LogRange
from cluster.runtime import ClusterRuntime

from . import archive, bots, metrics, selectors, services
from .identity import client_address
from .models import SLUG_PATTERN
from .ops_auth import ops_endpoint
from .protocol import MAX_FRAME_CHARS, parse_seq
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


# -- posting (POST /api/rooms/SLUG/messages) ---------------------------------------------------

# Each error code of the socket protocol as an HTTP status.
POST_STATUS = {
    "bad_request": 400,
    "forbidden": 403,
    "not_found": 404,
    "too_large": 413,
    "rate_limited": 429,
    "unavailable": 503,
}
# A request body past this is refused unread: the socket's frame limit (a 4,000-character
# body escaped as \uXXXX pairs fits), in bytes, with room for UTF-8.
POST_MAX_BYTES = 4 * MAX_FRAME_CHARS


class _JsonCsrfCheck(CsrfViewMiddleware):
    """Django's CSRF check, answering with its reason instead of the HTML failure page."""

    def _reject(self, request: HttpRequest, reason: str) -> str:  # type: ignore[override]
        return reason


def _csrf_refusal(request: HttpRequest) -> str | None:
    """Why the request fails Django's CSRF check (None if it passes): what a session's POST
    needs. A bearer token needs none: a browser never attaches it on its own."""
    check = _JsonCsrfCheck(lambda request: HttpResponse())
    check.process_request(request)
    refusal = check.process_view(request, None, (), {})  # type: ignore[arg-type]
    return refusal if isinstance(refusal, str) else None


def _post_payload(raw: bytes) -> tuple[Any, str | None]:
    """(body, client_id) from the JSON request body; raises CommandError. Types are checked
    here; emptiness and length by the command's own validation, as for a socket's send."""
    if len(raw) > POST_MAX_BYTES:
        raise CommandError("too_large", f"request body has {len(raw)} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise CommandError("bad_request", "request body is not UTF-8") from None
    except ValueError:
        raise CommandError("bad_request", "request body is not valid JSON") from None
    except RecursionError:
        raise CommandError("bad_request", "request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise CommandError("bad_request", 'send a JSON object: {"body": ..., "client_id": ...}')
    if "body" not in data:
        raise CommandError("bad_request", "body is missing")
    body, client_id = data["body"], data.get("client_id")
    if not isinstance(body, str):
        raise CommandError("bad_request", "body must be a string")
    if client_id is not None and (not isinstance(client_id, str) or not client_id):
        raise CommandError("bad_request", "client_id must be a non-empty string")
    for name, value in (("body", body), ("client_id", client_id)):
        if isinstance(value, str) and not _utf8(value):
            raise CommandError("bad_request", f"{name} is not valid Unicode text")
    return body, client_id


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, "\ud800" in JSON
        return False
    return True


def _bearer(request: HttpRequest) -> str | None:
    """The token of ``Authorization: Bearer TOKEN``; "" for any other Authorization header;
    None when there is none (the session then)."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class _BadToken(CommandError):
    """The Authorization header holds no usable bot token."""

    def __init__(self, detail: str) -> None:
        super().__init__("forbidden", detail)


async def _poster(request: HttpRequest) -> Any:
    """Who posts: a bot token's row, or the session's user; raises CommandError."""
    token = _bearer(request)
    if token == "":
        raise _BadToken("use Authorization: Bearer BOT_TOKEN")
    if token is not None:
        try:
            return await sync_to_async(bots.authenticate)(token)
        except bots.BotRefused as refused:
            raise _BadToken(str(refused)) from None
    user = await request.auser()  # type: ignore[attr-defined]
    if not user.is_authenticated:
        raise CommandError("forbidden", "log in, or send Authorization: Bearer BOT_TOKEN")
    refusal = _csrf_refusal(request)
    if refusal is not None:
        raise CommandError("forbidden", f"CSRF check failed: {refusal}")
    return user


@csrf_exempt  # checked in the view for sessions only: a bearer token is no ambient credential
async def room_messages(request: HttpRequest, slug: str) -> JsonResponse:
    """``POST /api/rooms/SLUG/messages``: post as a session's user or a bot, as a socket's
    ``send`` does. 201 with the ack; 200 with the same ack when the ``client_id`` was posted
    before; the socket's error codes as 4xx/503 JSON ``{"code", "detail"}``."""
    if request.method != "POST":
        response = _error(405, "bad_request", "use POST")
        response["Allow"] = "POST"
        return response
    if not _SLUG.fullmatch(slug):
        return _error(404, "not_found", f"no room {slug[:60]!r}")
    client_id: str | None = None
    try:
        try:
            raw = request.body
        except RequestDataTooBig:
            raise CommandError("too_large", "request body too large") from None
        author = await _poster(request)
        body, client_id = _post_payload(raw)
        address = client_address(request.scope) if hasattr(request, "scope") else ""
        result = await services.apost_message(
            slug, body, author=author, client_id=client_id, address=address
        )
    except CommandError as exc:
        answer = {"error": exc.code, "code": exc.code, "detail": exc.detail}
        if client_id is not None:
            answer["client_id"] = client_id  # as the socket's error frame names it
        response = JsonResponse(answer, status=POST_STATUS.get(exc.code, 400))
        if isinstance(exc, _BadToken):
            response["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return response
    except Exception:
        logger.exception("posting to %s failed", slug)
        return _error(503, "unavailable", "try again")
    ack = {"seq": result.seq, "id": result.id, "client_id": result.client_id}
    return JsonResponse(ack, status=200 if result.duplicate else 201)
