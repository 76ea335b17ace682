"""The web chat's pages (rooms.views_web): room list, create form, room page, sign-up and log-in."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import redis
from django.contrib.auth import get_user_model
from django.contrib.staticfiles import finders
from django.test import Client
from django.urls import reverse

from cluster import keys
from cluster.fanout import SEP
from cluster.keys import RoomKeys
from rooms import services
from rooms.models import Room

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@pytest.fixture
def user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("alice", password="correct horse battery")


@pytest.fixture
def alice(client: Client, user: Any) -> Client:
    client.force_login(user)
    return client


def archived(slug: str) -> Room:
    room, _ = services.room_create(slug=slug)
    Room.objects.filter(pk=room.pk).update(archived_at="2024-01-01T00:00:00Z")
    return room


def chat_config(html: str) -> dict[str, Any]:
    found = re.search(r'<script id="chat-config" type="application/json">(.*?)</script>', html)
    assert found, "the room page carries its config as json_script"
    config: dict[str, Any] = json.loads(found.group(1))
    return config


# -- home: the room list -------------------------------------------------------------------


def test_home_lists_active_rooms(client: Client) -> None:
    services.room_create(slug="lobby", name="The Lobby")
    services.room_create(slug="dev-talk")
    archived("old-room")

    response = client.get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "The Lobby" in html and "/r/lobby/" in html
    assert "/r/dev-talk/" in html
    assert "old-room" not in html
    # Rooms are created by registered users by default (CHAT_ROOM_CREATORS=users).
    assert 'id="room-form"' not in html and "to create a room" in html


def test_home_shows_who_is_online_from_redis(client: Client, redis_url: str) -> None:
    services.room_create(slug="lobby")
    services.room_create(slug="empty")
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    secs, micros = r.time()
    r.zadd(keys.NODES, {"node-a": int(secs) * 1000 + int(micros) // 1000})
    r.hset(RoomKeys("lobby").presence, mapping={f"node-a{SEP}bob": 1, f"node-a{SEP}carol": 2})
    r.close()

    html = client.get("/").content.decode()

    lobby = html[html.index("/r/lobby/") : html.index("</li>", html.index("/r/lobby/"))]
    assert "2 online" in lobby and "bob, carol" in lobby
    empty = html[html.index("/r/empty/") : html.index("</li>", html.index("/r/empty/"))]
    assert "0 online" in empty
    assert "unknown right now" not in html


def test_home_without_redis_still_lists_rooms(client: Client, settings: Any) -> None:
    settings.CHAT_REDIS_URL = UNREACHABLE_REDIS
    services.room_create(slug="lobby")

    response = client.get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "/r/lobby/" in html
    assert "online</span>" not in html
    assert "Who is online is unknown right now." in html


def test_home_without_any_redis_configured(client: Client, settings: Any) -> None:
    settings.CHAT_REDIS_URL = ""
    services.room_create(slug="lobby")

    response = client.get("/")

    assert response.status_code == 200
    assert "unknown right now" in response.content.decode()


def test_home_poll_returns_the_list_partial(client: Client) -> None:
    services.room_create(slug="lobby")

    response = client.get("/", headers={"HX-Request": "true", "HX-Target": "room-list"})

    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="room-list"')
    assert "<html" not in html and "/r/lobby/" in html and 'id="room-form"' not in html


def test_user_text_is_escaped(client: Client) -> None:
    services.room_create(slug="xss", name="<script>alert(1)</script>")

    for path in ("/", "/r/xss/"):
        html = client.get(path).content.decode()
        assert "<script>alert(1)</script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


# -- creating a room -----------------------------------------------------------------------


def test_create_room_with_htmx_redirects_to_it(alice: Client, user: Any) -> None:
    response = alice.post("/rooms/new/", {"slug": "book-club", "name": "Book club"}, **HTMX)

    assert response.status_code == 200
    assert response["HX-Redirect"] == "/r/book-club/"
    room = Room.objects.get(slug="book-club")
    assert room.name == "Book club" and room.created_by == user


def test_create_room_without_htmx_redirects(alice: Client) -> None:
    response = alice.post("/rooms/new/", {"slug": "plain", "name": ""})

    assert response.status_code == 302
    assert response["Location"] == "/r/plain/"
    assert Room.objects.get(slug="plain").name == "plain"


def test_create_room_lower_cases_the_slug(alice: Client) -> None:
    response = alice.post("/rooms/new/", {"slug": "  Lobby ", "name": "Lobby"}, **HTMX)

    assert response["HX-Redirect"] == "/r/lobby/"


def test_create_existing_slug_goes_to_that_room(alice: Client) -> None:
    services.room_create(slug="lobby", name="The Lobby")

    response = alice.post("/rooms/new/", {"slug": "lobby", "name": "Another"}, **HTMX)

    assert response["HX-Redirect"] == "/r/lobby/"
    assert Room.objects.filter(slug="lobby").count() == 1
    assert Room.objects.get(slug="lobby").name == "The Lobby"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"slug": "hello world!", "name": ""}, "lower-case letters, digits and hyphens"),
        ({"slug": "-edge", "name": ""}, "lower-case letters, digits and hyphens"),
        ({"slug": "x" * 51, "name": ""}, "at most 50 characters"),
        ({"slug": "", "name": "No slug"}, "This field is required."),
        ({"slug": "fine", "name": "n" * 101}, "at most 100 characters"),
    ],
    ids=["bad-chars", "leading-hyphen", "slug-too-long", "empty", "name-too-long"],
)
def test_create_room_refuses_bad_input_inline(
    alice: Client, data: dict[str, str], message: str
) -> None:
    response = alice.post("/rooms/new/", data, **HTMX)

    assert response.status_code == 422
    assert "HX-Redirect" not in response
    html = response.content.decode()
    assert html.lstrip().startswith('<form id="room-form"'), "only the form partial comes back"
    assert message in html
    assert 'aria-invalid="true"' in html
    assert not Room.objects.exists()


def test_create_room_bad_input_without_htmx_renders_the_page(alice: Client) -> None:
    response = alice.post("/rooms/new/", {"slug": "no way", "name": ""})

    assert response.status_code == 422
    html = response.content.decode()
    assert "<html" in html and "lower-case letters, digits and hyphens" in html


def test_create_room_with_an_archived_slug_is_refused(alice: Client) -> None:
    archived("gone")

    response = alice.post("/rooms/new/", {"slug": "gone", "name": ""}, **HTMX)

    assert response.status_code == 422
    assert "archived" in response.content.decode()


def test_guests_may_create_rooms_when_anyone_may(client: Client, settings: Any) -> None:
    settings.CHAT_ALLOW_GUESTS = True
    settings.CHAT_ROOM_CREATORS = "anyone"

    response = client.post("/rooms/new/", {"slug": "open", "name": ""}, **HTMX)

    assert response["HX-Redirect"] == "/r/open/"
    room = Room.objects.get(slug="open")
    assert room.created_by is None and room.created_by_principal.startswith("g:")


def test_only_users_create_rooms_when_guests_are_off(
    client: Client, user: Any, settings: Any
) -> None:
    settings.CHAT_ALLOW_GUESTS = False

    assert client.post("/rooms/new/", {"slug": "closed"}, **HTMX).status_code == 403
    assert "Log in</a> to create a room" in client.get("/").content.decode()
    client.force_login(user)
    assert client.post("/rooms/new/", {"slug": "closed"}, **HTMX)["HX-Redirect"] == "/r/closed/"


def test_create_room_takes_post_only(alice: Client) -> None:
    assert alice.get("/rooms/new/").status_code == 405


# -- the room page -------------------------------------------------------------------------


def test_room_page_carries_the_js_module_and_its_config(alice: Client) -> None:
    services.room_create(slug="lobby", name="The Lobby")

    response = alice.get("/r/lobby/")

    assert response.status_code == 200
    html = response.content.decode()
    # Hashed names (production settings; the session collected the static files).
    assert re.search(
        r'<script type="module" src="/static/chat/chat\.[0-9a-f]{12}\.js"></script>', html
    )
    assert re.search(r"/static/vendor/htmx\.min\.[0-9a-f]{12}\.js", html)
    assert 'id="composer"' in html and 'id="messages"' in html and 'id="online"' in html
    assert 'id="older"' in html  # scroll-up loads older messages (``before=``); also a button
    assert 'id="search"' in html and 'id="search-results"' in html
    assert chat_config(html) == {
        "slug": "lobby",
        "name": "The Lobby",
        "user": "alice",
        "isStaff": False,
        "guestName": None,
        "guestUrl": "/r/lobby/guest",
        "guestsAllowed": True,
        "guestNameMax": services.GUEST_NAME_MAX,
        "maxBody": 4000,
        "eventsUrl": "/api/rooms/lobby/events",
        "searchUrl": "/api/rooms/lobby/search",
        "lastRead": None,
        "readUrl": "/r/lobby/read",
        "socketPath": "/ws/rooms/lobby/",
    }


def test_room_page_for_a_moderator(client: Client, django_user_model: Any) -> None:
    # Staff status alone moderates nothing (issue 9): the moderate_room permission does.
    from django.contrib.auth.models import Permission

    services.room_create(slug="lobby")
    mod = django_user_model.objects.create_user("mod", is_staff=True)
    client.force_login(mod)
    assert chat_config(client.get("/r/lobby/").content.decode())["isStaff"] is False
    mod.user_permissions.add(Permission.objects.get(codename="moderate_room"))
    assert chat_config(client.get("/r/lobby/").content.decode())["isStaff"] is True


def test_room_page_for_a_guest_asks_a_name(client: Client) -> None:
    services.room_create(slug="lobby")

    html = client.get("/r/lobby/").content.decode()

    config = chat_config(html)
    assert config["user"] is None and config["guestsAllowed"] is True
    assert 'id="guest-form"' in html and 'id="composer"' in html


def test_room_page_when_guests_are_off_is_read_only(client: Client, settings: Any) -> None:
    settings.CHAT_ALLOW_GUESTS = False
    services.room_create(slug="lobby")

    html = client.get("/r/lobby/").content.decode()

    assert chat_config(html)["guestsAllowed"] is False
    assert 'id="composer"' not in html and 'id="guest-form"' not in html
    assert "to join the conversation" in html


def test_room_page_404_for_unknown_room(client: Client) -> None:
    assert client.get("/r/nowhere/").status_code == 404


def test_room_page_404_for_archived_room(client: Client) -> None:
    archived("old")

    assert client.get("/r/old/").status_code == 404


CHAT_SCRIPTS = ("chat.js", "text.js", "mentions.js", "timeline.js", "reading.js")


def test_static_files_are_there() -> None:
    paths = [f"chat/{name}" for name in CHAT_SCRIPTS] + ["chat/chat.css", "vendor/htmx.min.js"]
    for path in paths:
        assert finders.find(path), path


@pytest.mark.parametrize("name", CHAT_SCRIPTS)
def test_chat_scripts_never_parse_html(name: str) -> None:
    # User text reaches the page through textContent and DOM calls only (tests/browser checks
    # the behaviour; this keeps the sinks out of the source).
    found = finders.find(f"chat/{name}")
    assert found
    with open(found, encoding="utf-8") as source:
        code = source.read()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "createContextualFragment", "DOMParser"):  # fmt: skip
        assert sink not in code, f"{name} uses {sink}"


# -- accounts ------------------------------------------------------------------------------


def test_signup_logs_in_and_goes_home(client: Client) -> None:
    assert client.get("/accounts/signup/").status_code == 200

    response = client.post(
        "/accounts/signup/",
        {
            "username": "dora",
            "password1": "a long pass phrase 42",
            "password2": "a long pass phrase 42",
        },
    )

    assert response.status_code == 302 and response["Location"] == reverse("home")
    assert get_user_model().objects.filter(username="dora").exists()
    home = client.get("/").content.decode()
    assert '<span class="who">dora</span>' in home and "Log out" in home


def test_signup_follows_a_safe_next_only(client: Client) -> None:
    services.room_create(slug="lobby")
    form = {"password1": "a long pass phrase 42", "password2": "a long pass phrase 42"}

    response = client.post("/accounts/signup/?next=/r/lobby/", {**form, "username": "eve"})
    assert response["Location"] == "/r/lobby/"

    client.logout()
    response = client.post(
        "/accounts/signup/", {**form, "username": "frank", "next": "https://evil.example/"}
    )
    assert response["Location"] == reverse("home")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"username": "Alice", "password1": "x9!long-pass", "password2": "x9!long-pass"},
            "already exists",
        ),
        ({"username": "gina", "password1": "a long pass phrase", "password2": "different"}, "didn"),
        ({"username": "hank", "password1": "short", "password2": "short"}, "too short"),
        ({"username": "", "password1": "x9!long-pass", "password2": "x9!long-pass"}, "required"),
    ],
    ids=["taken-any-case", "mismatch", "weak-password", "no-username"],
)
def test_signup_refuses_bad_input(
    client: Client, user: Any, data: dict[str, str], message: str
) -> None:
    response = client.post("/accounts/signup/", data)

    assert response.status_code == 200
    assert message in response.content.decode()
    assert get_user_model().objects.count() == 1


def test_signup_when_logged_in_goes_home(alice: Client) -> None:
    assert alice.get("/accounts/signup/")["Location"] == reverse("home")


def test_login_and_logout(client: Client, user: Any) -> None:
    page = client.get("/accounts/login/?next=/r/lobby/")
    assert page.status_code == 200 and 'name="next" value="/r/lobby/"' in page.content.decode()

    bad = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert bad.status_code == 200 and "_auth_user_id" not in client.session

    good = client.post(
        "/accounts/login/",
        {"username": "alice", "password": "correct horse battery", "next": "/r/lobby/"},
    )
    assert good.status_code == 302 and good["Location"] == "/r/lobby/"
    assert client.session["_auth_user_id"] == str(user.pk)

    assert client.get("/accounts/logout/").status_code == 405, "logging out takes a POST"
    out = client.post("/accounts/logout/")
    assert out.status_code == 302 and out["Location"] == reverse("home")
    assert "_auth_user_id" not in client.session


def test_header_for_anonymous_links_back_here(client: Client) -> None:
    services.room_create(slug="lobby")

    html = client.get("/r/lobby/").content.decode()

    assert 'href="/accounts/login/?next=/r/lobby/"' in html
    assert 'href="/accounts/signup/?next=/r/lobby/"' in html
