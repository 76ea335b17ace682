"""The web chat's pages: the room list with its create form, the room page, and sign-up.

Who may create a room is ``CHAT_ROOM_CREATORS`` (users, staff or anyone), at most
``CHAT_ROOMS_PER_USER`` each (``services.room_create_for``). A guest joins a room through the
guest form, which keeps a guest id and the display name in the session. The room page
renders no messages itself: ``chatsite/static/chat/chat.js`` reads history from the events API
and then follows the room's socket. Log in and log out are Django's own views (see ``urls_web``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from cluster.errors import CommandError

from . import read_positions, redis_admin, selectors, services
from .forms import RoomCreateForm, SignupForm
from .login_throttle import LoginForm
from .models import Room
from .protocol import parse_seq

logger = logging.getLogger("rooms.views_web")

# Redis down, or not configured in this process: the list is still worth showing without counts.
STATS_ERRORS = (redis.RedisError, OSError, RuntimeError)
ROOM_LIST_ID = "room-list"  # the element the home page polls (its HX-Target)


@dataclass(frozen=True)
class RoomRow:
    room: Room
    online: list[str] | None  # None: unknown (Redis unreachable)
    unread: read_positions.Unread | None = None  # None: never read here, or unknown


def room_rows(page: object = 1, request: HttpRequest | None = None) -> tuple[list[RoomRow], bool]:
    """One page of active rooms with who is online in each and, for a reader (``request``),
    how many messages they have not read; the flag says whether the counts are known."""
    rooms = list(selectors.room_page(page))
    slugs = [room.slug for room in rooms]
    at = read_positions.positions(request, slugs) if request is not None else {}
    try:
        stats = redis_admin.room_stats(slugs)
        unread = read_positions.unread_counts(request, at) if request is not None else {}
    except STATS_ERRORS as exc:
        logger.warning("room list without live counts: %s", exc)
        return [RoomRow(room, None) for room in rooms], False
    rows = [RoomRow(room, stats[room.slug].online, unread.get(room.slug)) for room in rooms]
    return rows, True


def can_create_rooms(request: HttpRequest) -> bool:
    """Whether the create form is offered (the policy; the per-user limit is checked on
    submit)."""
    policy = settings.CHAT_ROOM_CREATORS
    user = request.user
    if policy == "staff":
        return bool(user.is_authenticated and user.is_staff)
    if policy == "users":
        return bool(user.is_authenticated)
    return bool(user.is_authenticated or settings.CHAT_ALLOW_GUESTS)


def _list_context(request: HttpRequest) -> dict[str, Any]:
    page = selectors.room_page(request.GET.get("page", 1))
    rows, stats_ok = room_rows(page.number, request)
    return {"rows": rows, "stats_ok": stats_ok, "room_list_id": ROOM_LIST_ID, "page": page}


def _home_context(request: HttpRequest, form: RoomCreateForm | None = None) -> dict[str, Any]:
    return {
        **_list_context(request),
        "form": form or RoomCreateForm(),
        "can_create": can_create_rooms(request),
    }


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    if request.htmx and request.htmx.target == ROOM_LIST_ID:
        return render(request, "rooms/_room_list.html", _list_context(request))
    return render(request, "rooms/home.html", _home_context(request))


@require_POST
def room_create(request: HttpRequest) -> HttpResponse:
    """Create a room (idempotent on the slug) and go to it; on bad input show the form again."""
    if not can_create_rooms(request):
        return HttpResponseForbidden("You may not create rooms here.")
    form = RoomCreateForm(request.POST)
    if form.is_valid():
        try:
            room, _ = services.room_create_for(
                user=request.user,
                session=request.session,
                slug=form.cleaned_data["slug"],
                name=form.cleaned_data["name"],
            )
        except PermissionDenied as exc:
            form.add_error(None, str(exc))
        except ValidationError as exc:
            # A dict of field errors (the name) or one message about the slug.
            form.add_error(None if hasattr(exc, "error_dict") else "slug", exc)
        else:
            if room.archived:
                form.add_error("slug", "A room with this slug was archived; choose another slug.")
            else:
                url = reverse("room", args=[room.slug])
                return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    # 422 tells scripts the input was refused; the htmx-config in base.html still swaps it in.
    if request.htmx:
        return render(request, "rooms/_room_form.html", {"form": form}, status=422)
    return render(request, "rooms/home.html", _home_context(request, form), status=422)


@require_GET
def room(request: HttpRequest, slug: str) -> HttpResponse:
    found = selectors.room_get(slug)
    if found is None or found.archived:
        raise Http404("No such room.")
    user = request.user
    signed_in = bool(user.is_authenticated)
    guest = request.session.get(services.GUEST_SESSION_KEY)
    guest_name = guest.get("name") if isinstance(guest, dict) and not signed_in else None
    chat_config = {
        "slug": found.slug,
        "name": found.name,
        "user": user.get_username() if signed_in else None,
        # May edit and delete other people's messages (the permission; the socket's hello
        # says it again, and the room's owner checks it on every command).
        "isStaff": bool(signed_in and user.has_perm("rooms.moderate_room")),
        "guestName": guest_name or None,  # the session's guest name, if it joined as one
        "guestUrl": reverse("room-guest", args=[found.slug]),
        "guestsAllowed": settings.CHAT_ALLOW_GUESTS,
        "guestNameMax": services.GUEST_NAME_MAX,
        "maxBody": settings.CHAT_MAX_BODY,
        "eventsUrl": reverse("api-room-events", args=[found.slug]),
        "searchUrl": reverse("api-room-search", args=[found.slug]),
        # The last seq this reader saw (None: never here, or no reader); the page draws its
        # "new messages" line above what follows and reports what it shows to readUrl.
        "lastRead": read_positions.position(request, found.slug),
        "readUrl": reverse("room-read", args=[found.slug]),
        "socketPath": f"/ws/rooms/{found.slug}/",
    }
    context = {
        "room": found,
        "chat_config": chat_config,
        "can_chat": signed_in or settings.CHAT_ALLOW_GUESTS,
    }
    return render(request, "rooms/room.html", context)


@require_POST
def room_guest(request: HttpRequest, slug: str) -> JsonResponse:
    """The guest form: a display name for this browser session (a guest id kept with it in the
    session is the guest's identity; the name is checked against registered users here and
    against the room's other guests when the socket joins). 200 ``{"name"}`` or 422
    ``{"code", "detail"}``."""
    found = selectors.room_get(slug)
    if found is None or found.archived:
        raise Http404("No such room.")
    if not settings.CHAT_ALLOW_GUESTS:
        return JsonResponse({"code": "forbidden", "detail": "Log in to chat here."}, status=403)
    try:
        name = services.guest_join(request.session, request.POST.get("name", ""))
    except ValidationError as exc:
        return JsonResponse({"code": "bad_request", "detail": " ".join(exc.messages)}, status=422)
    return JsonResponse({"name": name})


@require_POST
def room_read(request: HttpRequest, slug: str) -> JsonResponse:
    """Record the last seq the reader has seen in the room (form field ``seq``; CSRF as every
    POST). 200 ``{"last_seq"}``: the position now, which never moves backwards; 400 for a
    missing or malformed seq or one the room has not issued yet; 403 without a reader (log in
    or join as a guest); 404 for an unknown or archived room; 503 when Redis cannot say."""
    found = selectors.room_get(slug)
    if found is None or found.archived:
        raise Http404("No such room.")
    if not read_positions.has_reader(request):
        return _json_error(403, "forbidden", "log in or join as a guest to keep your place")
    raw = request.POST.get("seq")
    if raw is None:
        return _json_error(400, "bad_request", "seq is required")
    try:
        seq = parse_seq("seq", raw)
    except CommandError as exc:
        return _json_error(400, exc.code, exc.detail)
    try:
        issued = read_positions.last_issued(found.slug)
    except STATS_ERRORS as exc:
        logger.warning("read position of %s not recorded: %s", slug, exc)
        return _json_error(503, "unavailable", "the room's log cannot be read now; try again")
    if seq > issued:
        return _json_error(400, "bad_request", f"seq={seq} is above the room's last seq")
    return JsonResponse({"last_seq": read_positions.record(request, found, seq)})


def _json_error(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"code": code, "detail": detail}, status=status)


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    next_url = _safe_next(request)
    if request.user.is_authenticated:
        return redirect(next_url)
    form = SignupForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user)
        return redirect(next_url)
    return render(request, "registration/signup.html", {"form": form, "next": next_url})


def _safe_next(request: HttpRequest) -> str:
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    allowed = url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return candidate if candidate and allowed else reverse(settings.LOGIN_REDIRECT_URL)


class LoginView(auth_views.LoginView):
    """Django's log-in page with failed attempts limited (rooms/login_throttle.py): a throttled
    attempt is answered 429 with the form and a message saying how long to wait."""

    authentication_form = LoginForm
    redirect_authenticated_user = True

    def form_invalid(self, form: Any) -> HttpResponse:
        response = super().form_invalid(form)
        if getattr(form, "throttled", False):
            response.status_code = 429
        return response
