"""Guarantee 11, identity half: authority belongs to a principal, never to a display name.

From outside: real sockets through the ASGI app (session cookies included), the guest form over
HTTP, a real Redis and a real cluster runtime.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.test import AsyncClient

from chatsite.asgi import application
from rooms import names, services
from rooms.identity import client_address
from rooms.runtime import build_runtime, install

pytestmark = pytest.mark.django_db(transaction=True)  # async tests run in auto mode

# Each looks like "alice" or "admin" on screen (issue 9's list).
LOOKALIKES = [
    "alice\u200b",  # a zero-width space
    "\u0430lice",  # a Cyrillic а
    "\uff41\uff4c\uff49\uff43\uff45",  # fullwidth
    "\u202eecila",  # right-to-left override: shows as "alice"
    "admin\u2060",  # a word joiner
    "ALICE",
    "aIice",  # a capital i
]


async def make_room(slug: str = "lobby") -> None:
    await sync_to_async(services.room_create)(slug=slug, name=slug.title())


async def register(name: str) -> Any:
    return await sync_to_async(get_user_model().objects.create_user)(name, password="pw-123-xyz")


async def recv(comm: WebsocketCommunicator, timeout: float = 5) -> dict[str, Any]:
    return json.loads(await comm.receive_from(timeout=timeout))


async def recv_until(comm: WebsocketCommunicator, kind: str) -> dict[str, Any]:
    for _ in range(50):
        frame = await recv(comm)
        if frame["type"] == kind:
            return frame
    raise AssertionError(f"no {kind} frame")


async def answer(comm: WebsocketCommunicator, client_id: str) -> dict[str, Any]:
    """The ack or error that answers ``client_id``."""
    for _ in range(50):
        frame = await recv(comm)
        if frame["type"] in ("ack", "error") and frame.get("client_id") == client_id:
            return frame
    raise AssertionError(f"no answer to {client_id}")


async def open_socket(
    path: str, cookie: str | None = None, headers: list[tuple[bytes, bytes]] | None = None
) -> WebsocketCommunicator:
    all_headers = list(headers or [])
    if cookie:
        all_headers.append((b"cookie", f"sessionid={cookie}".encode()))
    comm = WebsocketCommunicator(application, path, headers=all_headers)
    assert (await comm.connect(timeout=5))[0]
    return comm


async def joined(path: str, cookie: str | None = None) -> tuple[WebsocketCommunicator, dict]:
    comm = await open_socket(path, cookie)
    hello = await recv(comm)
    assert hello["type"] == "hello", hello
    assert (await recv(comm))["type"] == "presence_state"
    return comm, hello


async def refusal(path: str, cookie: str | None = None) -> tuple[int, str]:
    """(close code, the error's detail) of a socket that is refused."""
    comm = await open_socket(path, cookie)
    detail = ""
    for _ in range(5):
        output = await comm.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            return int(output["code"]), detail
        frame = json.loads(output["text"])
        assert frame["type"] == "error", f"admitted: {frame}"
        detail = frame["detail"]
    raise AssertionError("not closed")


@sync_to_async
def guest_session(name: str) -> str:
    """A browser session that went through the guest form with ``name``."""
    store = SessionStore()
    services.guest_join(store, name)
    store.save()
    assert store.session_key is not None
    return store.session_key


def path(slug: str, name: str | None = None, after: int | None = None) -> str:
    query = []
    if name is not None:
        query.append(f"name={quote(name)}")
    if after is not None:
        query.append(f"after={after}")
    return f"/ws/rooms/{slug}/" + ("?" + "&".join(query) if query else "")


# -- display names -------------------------------------------------------------------------


@pytest.mark.parametrize("lookalike", LOOKALIKES)
async def test_a_guest_name_that_looks_like_a_registered_user_is_refused(
    runtime: Any, lookalike: str
) -> None:
    await make_room()
    await register("alice")
    await register("admin")
    code, detail = await refusal(path("lobby", lookalike))
    assert code == 4403, detail


async def test_the_guest_form_refuses_lookalikes_and_keeps_the_guest_in_the_session(
    runtime: Any,
) -> None:
    await make_room()
    await register("alice")
    client = AsyncClient()
    for lookalike in LOOKALIKES[:5]:
        response = await client.post("/r/lobby/guest", {"name": lookalike})
        assert response.status_code == 422, lookalike
    response = await client.post("/r/lobby/guest", {"name": "  Bob  "})
    assert response.status_code == 200 and response.json() == {"name": "Bob"}
    # The room page then knows the guest (it joins without ?name=).
    page = (await client.get("/r/lobby/")).content.decode()
    assert '"guestName": "Bob"' in page


async def test_a_guest_name_confusable_with_a_guest_in_the_room_is_refused(runtime: Any) -> None:
    await make_room()
    sam, _ = await joined(path("lobby"), await guest_session("sam"))
    # Cyrillic "ѕ": another person who would look like sam.
    code, _ = await refusal(path("lobby", "\u0455am"))
    assert code == 4403
    code, _ = await refusal(path("lobby"), await guest_session("\u0455am"))
    assert code == 4403
    # The same name from another browser session is someone else too.
    code, _ = await refusal(path("lobby"), await guest_session("sam"))
    assert code == 4403
    await sam.disconnect()


def test_names_refuse_invisible_and_control_characters() -> None:
    for bad in ["alice\u200b", "\u202eecila", "admin\u2060", "a\u3164b", "x\x00", " ", "\u200d"]:
        assert names.problem(bad) is not None, repr(bad)
    for good in ["alice", "Zoë", "李小龙", "dev-42", "Ana María"]:
        assert names.problem(good) is None, good
    assert names.confusable("\u0430lice", "alice") and names.confusable("rnike", "mike")
    assert not names.confusable("alice", "alicia")


# -- authority belongs to the principal ------------------------------------------------------


async def test_two_guests_called_sam_cannot_change_each_others_messages(runtime: Any) -> None:
    await make_room()
    first, hello1 = await joined(path("lobby", "sam"))
    second, hello2 = await joined(path("lobby", "sam"))
    assert hello1["author"] != hello2["author"]
    await first.send_json_to({"type": "send", "body": "mine", "client_id": "c1"})
    assert (await answer(first, "c1"))["type"] == "ack"
    await second.send_json_to({"type": "edit", "id": "m1", "body": "not yours", "client_id": "e"})
    refused = await answer(second, "e")
    assert refused["type"] == "error" and refused["code"] == "forbidden"
    await second.send_json_to({"type": "delete", "id": "m1", "client_id": "d"})
    assert (await answer(second, "d"))["code"] == "forbidden"
    await first.send_json_to({"type": "edit", "id": "m1", "body": "fixed", "client_id": "e1"})
    assert (await answer(first, "e1"))["type"] == "ack"
    await first.disconnect()
    await second.disconnect()


async def test_registering_a_name_guests_used_gives_no_rights_over_their_messages(
    runtime: Any,
) -> None:
    await make_room()
    guest, _ = await joined(path("lobby", "carol"))
    await guest.send_json_to({"type": "send", "body": "a guest's words", "client_id": "c1"})
    assert (await answer(guest, "c1"))["type"] == "ack"
    await guest.disconnect()
    carol = await register("carol")
    comm = WebsocketCommunicator(application, path("lobby"))
    comm.scope["user"] = carol
    assert (await comm.connect(timeout=5))[0]
    assert (await recv(comm))["user"] == "carol"
    await comm.send_json_to({"type": "edit", "id": "m1", "body": "mine now?", "client_id": "e"})
    assert (await answer(comm, "e"))["code"] == "forbidden"
    await comm.disconnect()


async def test_a_session_guest_keeps_its_messages_across_reconnects(runtime: Any) -> None:
    await make_room()
    cookie = await guest_session("dora")
    comm, hello = await joined(path("lobby"), cookie)
    assert hello["user"] == "dora" and hello["guest"] is True
    await comm.send_json_to({"type": "send", "body": "one", "client_id": "c1"})
    assert (await answer(comm, "c1"))["seq"] == 1
    await comm.disconnect()
    again, hello2 = await joined(path("lobby", after=1), cookie)
    assert hello2["author"] == hello["author"]
    await again.send_json_to({"type": "edit", "id": "m1", "body": "two", "client_id": "e1"})
    assert (await answer(again, "e1"))["type"] == "ack"
    await again.disconnect()


async def test_a_name_only_client_dedupes_after_a_reconnect_but_owns_only_its_connection(
    runtime: Any,
) -> None:
    await make_room()
    comm, _ = await joined(path("lobby", "eve"))
    await comm.send_json_to({"type": "send", "body": "hello", "client_id": "c1"})
    assert (await answer(comm, "c1"))["seq"] == 1
    await comm.disconnect()
    again, _ = await joined(path("lobby", "eve", after=1))
    await again.send_json_to({"type": "send", "body": "hello", "client_id": "c1"})
    ack = await answer(again, "c1")
    assert ack["type"] == "ack" and ack["seq"] == 1  # guarantee 3: applied once
    await again.send_json_to({"type": "edit", "id": "m1", "body": "x", "client_id": "e1"})
    assert (await answer(again, "e1"))["code"] == "forbidden"
    await again.disconnect()


async def test_frames_say_guest_and_never_carry_the_session_guest_id(runtime: Any) -> None:
    await make_room()
    cookie = await guest_session("fay")
    guest_id = await sync_to_async(lambda: SessionStore(cookie).load()["chat_guest"]["id"])()
    watcher, _ = await joined(path("lobby", "watcher"))
    comm, _ = await joined(path("lobby"), cookie)
    await comm.send_json_to({"type": "send", "body": "hi", "client_id": "c1"})
    raw = await watcher.receive_from(timeout=5)
    while json.loads(raw)["type"] != "message":
        raw = await watcher.receive_from(timeout=5)
    message = json.loads(raw)
    assert message["guest"] is True and message["user"] == "fay"
    assert guest_id not in raw
    history = (await AsyncClient().get("/api/rooms/lobby/events")).content.decode()
    assert guest_id not in history and '"guest": true' in history
    await comm.disconnect()
    await watcher.disconnect()


# -- rate limits -----------------------------------------------------------------------------


@pytest.fixture
async def strict_runtime(redis_url: str) -> AsyncIterator[Any]:
    """A node with 3 commands per principal and 5 per address (per 60 s)."""
    rt = build_runtime(
        redis_url,
        node_name="strict-node",
        lease_ttl_ms=1500,
        rate_limit=(3, 60.0),
        rate_limit_per_address=(5, 60.0),
    )
    await rt.start()
    install(rt)
    try:
        yield rt
    finally:
        install(None)
        await rt.stop()


async def sends(comm: WebsocketCommunicator, prefix: str, count: int) -> list[str]:
    results = []
    for i in range(count):
        client_id = f"{prefix}{i}"
        await comm.send_json_to({"type": "send", "body": "x", "client_id": client_id})
        reply = await answer(comm, client_id)
        results.append("ack" if reply["type"] == "ack" else reply["code"])
    return results


async def test_a_new_name_is_no_new_rate_limit(strict_runtime: Any) -> None:
    await make_room()
    cookie = await guest_session("gil")
    comm, _ = await joined(path("lobby"), cookie)
    assert await sends(comm, "a", 4) == ["ack", "ack", "ack", "rate_limited"]
    await comm.disconnect()
    await sync_to_async(_rename_guest)(cookie, "gilbert")
    again, hello = await joined(path("lobby"), cookie)
    assert hello["user"] == "gilbert"
    assert await sends(again, "b", 1) == ["rate_limited"]
    await again.disconnect()


def _rename_guest(cookie: str, name: str) -> None:
    store = SessionStore(cookie)
    services.guest_join(store, name)
    store.save()


async def test_new_connections_from_one_address_share_its_limit(strict_runtime: Any) -> None:
    await make_room()
    first, _ = await joined(path("lobby", "h1"))
    assert await sends(first, "a", 3) == ["ack", "ack", "ack"]
    second, _ = await joined(path("lobby", "h2"))
    assert await sends(second, "b", 3) == ["ack", "ack", "rate_limited"]
    await first.disconnect()
    await second.disconnect()


def test_the_client_address_comes_from_a_trusted_proxy_only(settings: Any) -> None:
    scope = {"client": ("10.0.0.5", 5000), "headers": [(b"x-forwarded-for", b"1.2.3.4, 10.0.0.9")]}
    settings.CHAT_TRUSTED_PROXIES = []
    assert client_address(scope) == "10.0.0.5"  # the header is anyone's to write
    settings.CHAT_TRUSTED_PROXIES = ["10.0.0.0/24"]
    assert client_address(scope) == "1.2.3.4"  # the nearest hop that is not our proxy
    settings.CHAT_TRUSTED_PROXIES = ["10.0.0.5"]
    assert client_address(scope) == "10.0.0.9"
    untrusted = {"client": ("127.0.0.1", 1), "headers": [(b"x-forwarded-for", b"1.2.3.4")]}
    assert client_address(untrusted) == "127.0.0.1"


def test_sign_up_refuses_a_name_that_passes_for_an_account(client: Any) -> None:
    get_user_model().objects.create_user("alice", password="pw-123-xyz")
    form = {"password1": "x9!long-pass", "password2": "x9!long-pass"}
    for lookalike in ("\u0430lice", "alice\u200b", "AIice"):
        response = client.post("/accounts/signup/", {**form, "username": lookalike})
        assert response.status_code == 200, lookalike  # the form again, with its error
    assert get_user_model().objects.count() == 1
