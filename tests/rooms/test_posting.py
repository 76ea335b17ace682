"""Posting from outside a socket: ``rooms.services.(a)post_message`` and
``POST /api/rooms/SLUG/messages``, on one node with a real Redis (the database of the run)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django import db
from django.contrib.auth import get_user_model
from django.middleware.csrf import _get_new_csrf_string
from django.test import AsyncClient

from cluster.errors import CommandError
from rooms import bots, services
from rooms.models import BotToken

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def _room(slug: str = "lobby") -> Any:
    room, _ = await sync_to_async(services.room_create)(slug=slug)
    return room


async def _bot(name: str = "deploy-bot", rooms: list[Any] | None = None, **kw: Any) -> Any:
    return await sync_to_async(bots.create)(name=name, rooms=rooms or [], **kw)


async def _post(token: str | None, slug: str, data: Any, **headers: str) -> Any:
    raw = data if isinstance(data, (bytes, str)) else json.dumps(data)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await AsyncClient().post(
        f"/api/rooms/{slug}/messages", raw, content_type="application/json", headers=headers
    )


# -- the service ----------------------------------------------------------------------------


async def test_apost_message_is_a_send_with_dedupe(runtime: Any) -> None:
    await _room()
    author = services.Author("hook", "u:42")
    first = await services.apost_message("lobby", "hello", author=author, client_id="c1")
    again = await services.apost_message("lobby", "hello", author=author, client_id="c1")
    assert (first.seq, first.id, first.client_id, first.duplicate) == (1, "m1", "c1", False)
    assert (again.seq, again.id, again.duplicate) == (1, "m1", True)
    page = await runtime.events("lobby", after=0, limit=10)
    assert [(e["user"], e["body"], e["author"], e["client_id"]) for e in page.events] == [
        ("hook", "hello", "u:42", "c1")
    ]
    # No client_id: a fresh one each time, none echoed (as a socket send without one).
    anonymous = await services.apost_message("lobby", "again", author=author)
    assert anonymous.seq == 2 and anonymous.client_id is None


async def test_post_message_sync_from_a_worker_thread(runtime: Any) -> None:
    room = await _room()
    bot, _ = await _bot(rooms=[room])

    def in_a_worker() -> services.PostResult:
        try:
            return services.post_message("lobby", "from a thread", author=bot, client_id="t1")
        finally:
            db.connection.close()  # this thread's own connection: gone before the test database

    result = await sync_to_async(in_a_worker, thread_sensitive=False)()
    assert (result.seq, result.duplicate) == (1, False)
    # The same from Django's thread-sensitive executor (a sync view's thread).
    again = await sync_to_async(services.post_message)(
        "lobby", "from a thread", author=bot, client_id="t1"
    )
    assert (again.seq, again.duplicate) == (1, True)
    with pytest.raises(RuntimeError, match="apost_message"):
        services.post_message("lobby", "on the loop", author=bot)  # would block the loop


async def test_service_errors_are_the_sockets(runtime: Any) -> None:
    room = await _room()
    await _room("other")
    bot, _ = await _bot(rooms=[room])
    cases: list[tuple[str, Any, Any, str]] = [
        ("nowhere", "hi", bot, "not_found"),
        ("other", "hi", bot, "forbidden"),  # out of the token's scope
        ("lobby", "", bot, "bad_request"),
        ("lobby", "   ", bot, "bad_request"),
        ("lobby", "x" * 4001, bot, "too_large"),
        ("lobby", 5, bot, "bad_request"),
        ("lobby", "hi", object(), "forbidden"),  # not a user, not a bot
    ]
    for slug, body, author, code in cases:
        with pytest.raises(CommandError) as caught:
            await services.apost_message(slug, body, author=author)
        assert caught.value.code == code, (slug, body, caught.value)
    assert (await runtime.events("lobby", after=0, limit=10)).events == []


async def test_without_a_runtime_the_error_says_so() -> None:
    await _room()
    author = services.Author("hook", "u:1")
    with pytest.raises(services.NoRuntime, match="runnode") as caught:
        await services.apost_message("lobby", "hi", author=author)
    assert caught.value.code == "unavailable"
    with pytest.raises(services.NoRuntime):
        await sync_to_async(services.post_message)("lobby", "hi", author=author)
    response = await _post("chatbot_x_y", "lobby", {"body": "hi"})
    assert response.status_code in (403, 503)  # the token is checked before the node


# -- HTTP with a bot token ----------------------------------------------------------------


async def test_bot_posts_201_then_200_for_a_resend(runtime: Any) -> None:
    room = await _room()
    bot, token = await _bot(rooms=[room])
    first = await _post(token, "lobby", {"body": "deployed v2", "client_id": "d-1"})
    assert first.status_code == 201, first.content
    assert first.json() == {"seq": 1, "id": "m1", "client_id": "d-1"}
    again = await _post(token, "lobby", {"body": "deployed v2", "client_id": "d-1"})
    assert again.status_code == 200 and again.json() == first.json()
    events = (await runtime.events("lobby", after=0, limit=10)).events
    assert len(events) == 1
    assert events[0]["user"] == "deploy-bot" and events[0]["author"] == f"b:{bot.pk}"
    seen = await BotToken.objects.aget(pk=bot.pk)
    assert seen.last_used_at is not None
    # Only a hash is kept.
    assert seen.secret_hash == hashlib.sha256(token.encode()).hexdigest()
    row = await BotToken.objects.filter(pk=bot.pk).values().aget()
    assert token not in json.dumps(row, default=str)


MALFORMED: list[tuple[Any, int, str]] = [
    (b"", 400, "bad_request"),
    (b"{not json", 400, "bad_request"),
    (b"\xff\xfe{}", 400, "bad_request"),
    ("[1, 2]", 400, "bad_request"),
    ({}, 400, "bad_request"),  # no body
    ({"client_id": "c"}, 400, "bad_request"),
    ({"body": None}, 400, "bad_request"),
    ({"body": 12}, 400, "bad_request"),
    ({"body": ["hi"]}, 400, "bad_request"),
    ({"body": ""}, 400, "bad_request"),
    ({"body": " \n "}, 400, "bad_request"),
    ({"body": "x" * 4001}, 413, "too_large"),
    ({"body": "hi", "client_id": 7}, 400, "bad_request"),
    ({"body": "hi", "client_id": ""}, 400, "bad_request"),
    ({"body": "hi", "client_id": "c" * 101}, 400, "bad_request"),
    ('{"body": "\\ud800"}', 400, "bad_request"),
    ('{"body": "hi", "client_id": "\\udfff"}', 400, "bad_request"),
    ("[" * 100_000 + "]" * 100_000, 413, "too_large"),
    ('{"body": "' + "x" * 70_000 + '"}', 413, "too_large"),
]


async def test_malformed_bodies_get_a_clear_error_and_post_nothing(runtime: Any) -> None:
    room = await _room()
    _, token = await _bot(rooms=[room])
    for data, status, code in MALFORMED:
        response = await _post(token, "lobby", data)
        shown = repr(data)[:60]
        assert response.status_code == status, (shown, response.content[:200])
        assert response.json()["code"] == code, shown
        assert response.json()["detail"], shown
    assert (await runtime.events("lobby", after=0, limit=10)).events == []
    # Nesting that is deep but within the size limit is a clear 400, not a crash.
    deep = await _post(token, "lobby", "[" * 30_000 + "]" * 30_000)
    assert deep.status_code == 400 and deep.json()["code"] == "bad_request"
    # The node still posts.
    assert (await _post(token, "lobby", {"body": "still here"})).status_code == 201


async def test_tokens_that_may_not_post(runtime: Any) -> None:
    room = await _room()
    other = await _room("other")
    archived = await _room("old")
    await sync_to_async(services.room_archive)(archived)
    scoped, token = await _bot(rooms=[room])
    _, everywhere = await _bot("all-bot", all_rooms=True)
    revoked, revoked_token = await _bot("gone-bot", rooms=[room])
    await sync_to_async(bots.revoke)(revoked)
    cases = [
        ("chatbot_nokey", "lobby", 403),
        (token[:-1] + ("A" if token[-1] != "A" else "B"), "lobby", 403),  # wrong secret
        ("x" * 500, "lobby", 403),
        (revoked_token, "lobby", 403),
        (token, "other", 403),  # out of scope
        (token, "old", 403),  # archived
        (token, "nowhere", 404),
        (token, "Not_A_Slug", 404),
        (everywhere, "old", 403),
    ]
    for bearer, slug, status in cases:
        response = await _post(bearer, slug, {"body": "hi", "client_id": "c"})
        assert response.status_code == status, (bearer[:20], slug, response.content)
        expected = {403: "forbidden", 404: "not_found"}[status]
        assert response.json()["code"] == expected
    basic = await _post(None, "lobby", {"body": "hi"}, Authorization="Basic dXNlcjpwdw==")
    assert basic.status_code == 403 and basic.json()["code"] == "forbidden"
    assert basic["WWW-Authenticate"].startswith("Bearer")
    # The all-rooms token posts anywhere open.
    assert (await _post(everywhere, "other", {"body": "hi"})).status_code == 201
    assert (await runtime.events("lobby", after=0, limit=10)).events == []
    assert scoped.pk and other.pk


async def test_wrong_method_is_405(runtime: Any) -> None:
    await _room()
    for method in ("get", "put", "delete", "patch"):
        response = await getattr(AsyncClient(), method)("/api/rooms/lobby/messages")
        assert response.status_code == 405, method
        assert response["Allow"] == "POST"


async def test_rate_limit_is_the_sockets(runtime: Any) -> None:
    room = await _room()
    _, token = await _bot(rooms=[room])
    limit = runtime.config.rate_limit[0]
    for i in range(limit):
        response = await _post(token, "lobby", {"body": f"m{i}", "client_id": f"c{i}"})
        assert response.status_code == 201, (i, response.content)
    refused = await _post(token, "lobby", {"body": "one more", "client_id": "late"})
    assert refused.status_code == 429
    assert refused.json() == {
        "error": "rate_limited", "code": "rate_limited", "detail": refused.json()["detail"],
        "client_id": "late",
    }  # fmt: skip
    # A re-send of an acked post is still answered (its ack), limit or not.
    repeat = await _post(token, "lobby", {"body": "m0", "client_id": "c0"})
    assert repeat.status_code == 200 and repeat.json()["seq"] == 1


async def test_bot_name_may_not_impersonate_a_user(runtime: Any) -> None:
    room = await _room()
    await sync_to_async(get_user_model().objects.create_user)("alice", password="pw-12345678")
    for name in ("alice", "ALICE", "аlice", "al\u200bice", ""):
        with pytest.raises(Exception, match=r"(?i)registered|name|invisible|character"):
            await _bot(name, rooms=[room])
    # A user who registers a look-alike later: the bot is refused from then on.
    _, token = await _bot("carol", rooms=[room])
    await sync_to_async(get_user_model().objects.create_user)("Carol", password="pw-12345678")
    response = await _post(token, "lobby", {"body": "hi"})
    assert response.status_code == 403 and "registered" in response.json()["detail"]


# -- HTTP with a session --------------------------------------------------------------------


async def test_session_post_needs_csrf(runtime: Any) -> None:
    await _room()
    user = await sync_to_async(get_user_model().objects.create_user)("bob", password="pw-1234567")
    anonymous = AsyncClient(enforce_csrf_checks=True)
    response = await anonymous.post(
        "/api/rooms/lobby/messages", {"body": "hi"}, content_type="application/json"
    )
    assert response.status_code == 403 and response.json()["code"] == "forbidden"

    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(user)
    no_token = await client.post(
        "/api/rooms/lobby/messages", {"body": "hi"}, content_type="application/json"
    )
    assert no_token.status_code == 403 and "CSRF" in no_token.json()["detail"]
    secret = _get_new_csrf_string()
    client.cookies["csrftoken"] = secret
    posted = await client.post(
        "/api/rooms/lobby/messages",
        {"body": "hi from bob", "client_id": "b1"},
        content_type="application/json",
        headers={"X-CSRFToken": secret},
    )
    assert posted.status_code == 201, posted.content
    assert posted.json() == {"seq": 1, "id": "m1", "client_id": "b1"}
    events = (await runtime.events("lobby", after=0, limit=10)).events
    assert [(e["user"], e["author"]) for e in events] == [("bob", f"u:{user.pk}")]


async def test_concurrent_resends_are_one_message(runtime: Any) -> None:
    room = await _room()
    _, token = await _bot(rooms=[room])
    answers = await asyncio.gather(
        *(_post(token, "lobby", {"body": "once", "client_id": "same"}) for _ in range(5))
    )
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 200, 201]
    assert {a.json()["seq"] for a in answers} == {1}
    assert len((await runtime.events("lobby", after=0, limit=10)).events) == 1
