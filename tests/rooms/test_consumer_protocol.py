"""The socket protocol of CONTRACT.md on one node, through the real ASGI app and a real Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from chatsite.asgi import application
from rooms import services

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def make_room(slug: str = "lobby") -> None:
    await sync_to_async(services.room_create)(slug=slug, name=slug.title())


async def connect(
    path: str, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[WebsocketCommunicator, list[dict[str, Any]]]:
    comm = WebsocketCommunicator(application, path, headers=headers or [])
    connected, _ = await comm.connect(timeout=5)
    assert connected
    return comm, []


async def recv(comm: WebsocketCommunicator, timeout: float = 5) -> dict[str, Any]:
    return json.loads(await comm.receive_from(timeout=timeout))


async def recv_until(comm: WebsocketCommunicator, kind: str) -> dict[str, Any]:
    for _ in range(50):
        frame = await recv(comm)
        if frame["type"] == kind:
            return frame
    raise AssertionError(f"no {kind} frame")


async def joined(slug: str, name: str, after: int | None = None) -> WebsocketCommunicator:
    query = f"name={name}" + (f"&after={after}" if after is not None else "")
    comm, _ = await connect(f"/ws/rooms/{slug}/?{query}")
    hello = await recv(comm)
    assert hello["type"] == "hello"
    assert (await recv(comm))["type"] == "presence_state"
    return comm


async def test_hello_then_presence_state(runtime: Any) -> None:
    await make_room()
    comm, _ = await connect("/ws/rooms/lobby/?name=alice")
    hello = await recv(comm)
    # Additive fields (issue 9): the socket's author token, guest and moderator flags.
    author, guest, moderator = hello.pop("author"), hello.pop("guest"), hello.pop("moderator")
    assert author.startswith("c:") and guest is True and moderator is False
    assert hello == {
        "type": "hello",
        "room": "lobby",
        "node": "test-node",
        "user": "alice",
        "last_seq": 0,
    }
    assert await recv(comm) == {"type": "presence_state", "users": ["alice"]}
    await comm.disconnect()


async def test_send_acks_sender_and_delivers_message_to_everyone(runtime: Any) -> None:
    await make_room()
    alice = await joined("lobby", "alice")
    bob = await joined("lobby", "bob")
    await alice.send_json_to({"type": "send", "body": "hi bob", "client_id": "c1"})
    ack = await recv_until(alice, "ack")
    assert ack == {"type": "ack", "client_id": "c1", "seq": 1, "id": "m1"}
    message = await recv_until(bob, "message")
    assert message["seq"] == 1 and message["body"] == "hi bob" and message["user"] == "alice"
    assert message["client_id"] == "c1" and message["id"] == "m1" and message["room"] == "lobby"
    assert isinstance(message["ts"], int)
    await alice.disconnect()
    await bob.disconnect()


async def test_resend_with_same_client_id_is_applied_once(runtime: Any) -> None:
    await make_room()
    alice = await joined("lobby", "alice")
    for _ in range(3):
        await alice.send_json_to({"type": "send", "body": "once", "client_id": "same"})
        ack = await recv_until(alice, "ack")
        assert (ack["seq"], ack["id"]) == (1, "m1")
    page = await runtime.events("lobby", after=0, limit=100)
    assert [e["seq"] for e in page.events] == [1]
    await alice.disconnect()


async def test_resume_with_after_replays_then_goes_live(runtime: Any) -> None:
    await make_room()
    alice = await joined("lobby", "alice")
    for i in range(5):
        await alice.send_json_to({"type": "send", "body": f"m{i}", "client_id": f"c{i}"})
        await recv_until(alice, "ack")
    late = await joined("lobby", "late", after=2)
    replayed = [await recv_until(late, "message") for _ in range(3)]
    assert [m["seq"] for m in replayed] == [3, 4, 5]
    await alice.send_json_to({"type": "send", "body": "live", "client_id": "c9"})
    live = await recv_until(late, "message")
    assert live["seq"] == 6 and live["body"] == "live"
    await alice.disconnect()
    await late.disconnect()


async def test_resume_older_than_kept_history_gets_gap(runtime: Any) -> None:
    await make_room()
    alice = await joined("lobby", "alice")
    await alice.send_json_to({"type": "send", "body": "a", "client_id": "c1"})
    await recv_until(alice, "ack")
    await alice.send_json_to({"type": "send", "body": "b", "client_id": "c2"})
    await recv_until(alice, "ack")
    await runtime.redis.xtrim("chat:{room:lobby}:log", minid="2-0", approximate=False)
    late = await joined("lobby", "late", after=0)
    assert await recv(late) == {"type": "gap", "first_available": 2}
    assert (await recv(late))["seq"] == 2
    await alice.disconnect()
    await late.disconnect()


async def test_edit_and_delete_own_message(runtime: Any) -> None:
    await make_room()
    alice = await joined("lobby", "alice")
    bob = await joined("lobby", "bob")
    await alice.send_json_to({"type": "send", "body": "typo", "client_id": "c1"})
    await recv_until(alice, "ack")
    await alice.send_json_to({"type": "edit", "id": "m1", "body": "fixed", "client_id": "c2"})
    assert (await recv_until(alice, "ack"))["seq"] == 2
    edit = await recv_until(bob, "edit")
    assert edit["id"] == "m1" and edit["body"] == "fixed" and edit["seq"] == 2
    await bob.send_json_to({"type": "delete", "id": "m1", "client_id": "b1"})
    error = await recv_until(bob, "error")
    assert error["code"] == "forbidden" and error["client_id"] == "b1"
    await alice.send_json_to({"type": "delete", "id": "m1", "client_id": "c3"})
    assert (await recv_until(alice, "ack"))["seq"] == 3
    deleted = await recv_until(bob, "delete")
    assert deleted["id"] == "m1" and deleted["user"] == "alice"
    await alice.send_json_to({"type": "edit", "id": "m1", "body": "zombie", "client_id": "c4"})
    assert (await recv_until(alice, "error"))["code"] == "not_found"
    await alice.send_json_to({"type": "edit", "id": "m99", "body": "x", "client_id": "c5"})
    assert (await recv_until(alice, "error"))["code"] == "not_found"
    await alice.disconnect()
    await bob.disconnect()


async def test_a_moderator_may_delete_any_message(runtime: Any) -> None:
    # The moderate_room permission, not is_staff (issue 9: tests/rooms/test_moderation.py).
    await make_room()
    user_model = get_user_model()
    staff = await sync_to_async(_moderator)(user_model)
    alice = await joined("lobby", "alice")
    await alice.send_json_to({"type": "send", "body": "spam", "client_id": "c1"})
    await recv_until(alice, "ack")
    comm = WebsocketCommunicator(application, "/ws/rooms/lobby/")
    comm.scope["user"] = staff
    assert (await comm.connect(timeout=5))[0]
    assert (await recv(comm))["user"] == "mod"
    await comm.send_json_to({"type": "delete", "id": "m1", "client_id": "d1"})
    assert (await recv_until(comm, "ack"))["seq"] == 2
    await comm.disconnect()
    await alice.disconnect()


def _moderator(user_model: Any) -> Any:
    from django.contrib.auth.models import Permission

    user = user_model.objects.create_user("mod", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="moderate_room"))
    return user_model.objects.get(pk=user.pk)  # a fresh object: no stale permission cache


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_request"),
        ("[1, 2]", "bad_request"),
        ('"text"', "bad_request"),
        ('{"type": "dance"}', "bad_request"),
        ('{"body": "no type"}', "bad_request"),
        ('{"type": "send", "body": 5, "client_id": "c"}', "bad_request"),
        ('{"type": "send", "body": "   ", "client_id": "c"}', "bad_request"),
        ('{"type": "send", "body": "x", "client_id": 7}', "bad_request"),
        ('{"type": "edit", "body": "x", "client_id": "c"}', "bad_request"),
        ('{"type": "delete", "id": "", "client_id": "c"}', "bad_request"),
        (json.dumps({"type": "send", "body": "x" * 4001, "client_id": "c"}), "too_large"),
        ("x" * 20000, "too_large"),
    ],
)
async def test_bad_input_gets_error_and_socket_stays_usable(
    runtime: Any, frame: str, code: str
) -> None:
    await make_room()
    alice = await joined("lobby", "alice")
    await alice.send_to(text_data=frame)
    error = await recv_until(alice, "error")
    assert error["code"] == code and error["detail"]
    await alice.send_json_to({"type": "send", "body": "still here", "client_id": "ok"})
    assert (await recv_until(alice, "ack"))["seq"] == 1
    page = await runtime.events("lobby", after=0, limit=10)
    assert [e["body"] for e in page.events] == ["still here"]
    await alice.disconnect()


async def test_binary_frame_is_refused(runtime: Any) -> None:
    await make_room()
    alice = await joined("lobby", "alice")
    await alice.send_to(bytes_data=b"\x00\x01")
    assert (await recv_until(alice, "error"))["code"] == "bad_request"
    await alice.disconnect()


async def test_body_of_exactly_the_limit_is_accepted(runtime: Any) -> None:
    await make_room()
    alice = await joined("lobby", "alice")
    await alice.send_json_to({"type": "send", "body": "y" * 4000, "client_id": "c"})
    assert (await recv_until(alice, "ack"))["seq"] == 1
    await alice.disconnect()


async def test_flood_is_rate_limited_per_user(runtime: Any, settings: Any) -> None:
    await make_room()
    alice = await joined("lobby", "alice")
    codes = []
    for i in range(25):
        await alice.send_json_to({"type": "send", "body": f"{i}", "client_id": f"c{i}"})
        while True:
            frame = await recv(alice)
            if frame["type"] in ("ack", "error"):
                codes.append(frame.get("code", "ack"))
                break
    assert codes[:20] == ["ack"] * 20
    assert codes[20:] == ["rate_limited"] * 5
    bob = await joined("lobby", "bob")
    await bob.send_json_to({"type": "send", "body": "bob is fine", "client_id": "b"})
    assert (await recv_until(bob, "ack"))["seq"] == 21
    await alice.disconnect()
    await bob.disconnect()


async def test_typing_reaches_others_not_stored(runtime: Any) -> None:
    await make_room()
    alice = await joined("lobby", "alice")
    bob = await joined("lobby", "bob")
    await alice.send_json_to({"type": "typing"})
    assert await recv_until(bob, "typing") == {"type": "typing", "user": "alice"}
    page = await runtime.events("lobby", after=0, limit=10)
    assert page.events == []
    await alice.disconnect()
    await bob.disconnect()


async def test_presence_diff_on_join_and_leave_counts_tabs_once(runtime: Any) -> None:
    await make_room()
    alice = await joined("lobby", "alice")
    bob1 = await joined("lobby", "bob")
    assert await recv_until(alice, "presence_diff") == {
        "type": "presence_diff",
        "joins": ["bob"],
        "leaves": [],
    }
    bob2 = await joined("lobby", "bob")
    await bob1.disconnect()
    await bob2.disconnect()
    diff = await recv_until(alice, "presence_diff")
    assert diff == {"type": "presence_diff", "joins": [], "leaves": ["bob"]}
    await alice.disconnect()


async def test_unknown_room_closes_4404(runtime: Any) -> None:
    comm = WebsocketCommunicator(application, "/ws/rooms/nowhere/?name=a")
    assert (await comm.connect(timeout=5))[0]
    assert (await comm.receive_output(timeout=5))["type"] == "websocket.close"
    await comm.wait()


async def close_code(path: str) -> int:
    comm = WebsocketCommunicator(application, path)
    assert (await comm.connect(timeout=5))[0]
    for _ in range(5):
        output = await comm.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            return int(output["code"])
    raise AssertionError("not closed")


async def test_close_codes(runtime: Any, settings: Any) -> None:
    await make_room()
    assert await close_code("/ws/rooms/nowhere/?name=a") == 4404
    assert await close_code("/ws/rooms/lobby/") == 4403  # no identity
    await sync_to_async(get_user_model().objects.create_user)("carol", password="pw-123-xyz")
    assert await close_code("/ws/rooms/lobby/?name=carol") == 4403  # a registered user's name
    assert await close_code("/ws/rooms/lobby/?name=" + "n" * 31) == 4403
    settings.CHAT_ALLOW_GUESTS = False
    assert await close_code("/ws/rooms/lobby/?name=guest") == 4403
    settings.CHAT_ALLOW_GUESTS = True
    room = await sync_to_async(services.room_create)(slug="old")
    await sync_to_async(services.room_archive)(room[0])
    assert await close_code("/ws/rooms/old/?name=a") == 4403


async def test_archived_room_refuses_messages_from_open_sockets(runtime: Any) -> None:
    room, _ = await sync_to_async(services.room_create)(slug="lobby")
    alice = await joined("lobby", "alice")
    await sync_to_async(services.room_archive)(room)
    await alice.send_json_to({"type": "send", "body": "late", "client_id": "c"})
    assert (await recv_until(alice, "error"))["code"] == "forbidden"
    await alice.disconnect()


async def test_bad_after_is_reported_and_ignored(runtime: Any) -> None:
    await make_room()
    comm, _ = await connect("/ws/rooms/lobby/?name=a&after=-3")
    assert (await recv(comm))["code"] == "bad_request"
    assert (await recv(comm))["type"] == "hello"
    await comm.disconnect()


async def test_foreign_origin_is_refused_at_handshake(runtime: Any) -> None:
    await make_room()
    headers = [(b"origin", b"http://evil.example"), (b"host", b"localhost:8000")]
    comm = WebsocketCommunicator(application, "/ws/rooms/lobby/?name=a", headers=headers)
    connected, _code = await comm.connect(timeout=5)
    assert not connected  # daphne answers a close-before-accept with HTTP 403
    same = [(b"origin", b"http://localhost:8000"), (b"host", b"localhost:8000")]
    comm = WebsocketCommunicator(application, "/ws/rooms/lobby/?name=a", headers=same)
    assert (await comm.connect(timeout=5))[0]
    await comm.disconnect()


async def test_draining_node_refuses_new_sockets_with_1012(runtime: Any) -> None:
    await make_room()
    runtime.state = "draining"
    try:
        assert await close_code("/ws/rooms/lobby/?name=a") == 1012
    finally:
        runtime.state = "running"
