"""The consumer under faults and odd timing (issue 8, holes 7 and 8), in-process with a real Redis.

Every test here but the in-band ``_close`` one failed on the consumer before issue 8: a resume
ahead of the node got seqs it had; an outbox overflow at the end of a burst stayed missing;
dropped presence diffs were never replaced; a hole in the log was skipped silently; a failed log
read or an error after attach left the socket open and silent or attached; nothing was capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
import redis.exceptions
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from chatsite.asgi import application
from rooms import consumers, services
from rooms.socket_caps import caps_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

Frame = dict[str, Any]


async def make_room(slug: str = "lobby") -> None:
    await sync_to_async(services.room_create)(slug=slug, name=slug.title())


async def open_socket(name: str, after: int | None = None) -> WebsocketCommunicator:
    query = f"name={name}" + (f"&after={after}" if after is not None else "")
    comm = WebsocketCommunicator(application, f"/ws/rooms/lobby/?{query}")
    connected, _ = await comm.connect(timeout=5)
    assert connected
    return comm


async def next_output(comm: WebsocketCommunicator, timeout: float = 5) -> Frame:
    """The next frame, or ``{"type": "closed", "code": N}`` for a close."""
    output = await comm.receive_output(timeout=timeout)
    if output["type"] == "websocket.close":
        return {"type": "closed", "code": output.get("code")}
    return json.loads(output["text"])


async def joined(name: str, after: int | None = None) -> WebsocketCommunicator:
    comm = await open_socket(name, after)
    assert (await next_output(comm))["type"] == "hello"
    assert (await next_output(comm))["type"] == "presence_state"
    return comm


async def frames_until(comm: WebsocketCommunicator, done: Any, timeout: float = 10) -> list[Frame]:
    """Frames in order until ``done(frames)`` is true or the socket closes."""
    frames: list[Frame] = []

    async def collect() -> None:
        while not done(frames):
            frame = await next_output(comm, timeout)
            frames.append(frame)
            if frame["type"] == "closed":
                return

    await asyncio.wait_for(collect(), timeout)
    return frames


def seqs(frames: list[Frame]) -> list[int]:
    return [f["seq"] for f in frames if f.get("type") in ("message", "edit", "delete")]


async def send_messages(comm: WebsocketCommunicator, count: int, prefix: str) -> list[int]:
    acked = []
    for i in range(count):
        await comm.send_json_to(
            {"type": "send", "body": f"{prefix}{i}", "client_id": f"{prefix}{i}"}
        )
        while (frame := await next_output(comm))["type"] != "ack":
            pass
        acked.append(frame["seq"])
    return acked


def listener_of(runtime: Any, user: str) -> Any:
    room = runtime.fanout.rooms["lobby"]
    return next(listener for listener in room.listeners if listener.user == user)


async def test_request_close_closes_with_the_code_and_detaches(runtime: Any) -> None:
    await make_room()
    alice = await joined("alice")
    listener_of(runtime, "alice").request_close(1012)
    assert await next_output(alice) == {"type": "closed", "code": 1012}
    await alice.disconnect()
    assert runtime.fanout.connections == 0
    assert caps_of(runtime).held_by("n:alice") == 0


async def test_the_old_in_band_close_frame_still_works(runtime: Any) -> None:
    await make_room()
    alice = await joined("alice")
    listener_of(runtime, "alice").deliver({"type": "_close", "code": 1012})
    assert await next_output(alice) == {"type": "closed", "code": 1012}
    await alice.disconnect()


async def test_resume_ahead_of_the_node_gets_no_seq_twice(runtime: Any) -> None:
    # The client was on a node further on: it has seen up to 5 while this node has delivered
    # 3. Events 4 and 5 reach this node later; the client must not get them again.
    await make_room()
    alice = await joined("alice")
    assert await send_messages(alice, 3, "a") == [1, 2, 3]
    ahead = await joined("ahead", after=5)
    assert await send_messages(alice, 3, "b") == [4, 5, 6]
    frames = await frames_until(ahead, lambda fs: 6 in seqs(fs))
    assert seqs(frames) == [6]
    await alice.disconnect()
    await ahead.disconnect()


async def test_overflow_at_the_end_of_a_burst_is_refilled(
    runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An outbox that holds nothing: every event overflows, and the last one has no successor
    # to reveal the hole. Each must still arrive, from the log, in order.
    await make_room()
    monkeypatch.setattr(consumers, "OUTBOX_FRAMES", 0)
    bob = await joined("bob")
    monkeypatch.setattr(consumers, "OUTBOX_FRAMES", 2000)
    alice = await joined("alice")
    await send_messages(alice, 4, "m")
    frames = await frames_until(bob, lambda fs: 4 in seqs(fs))
    assert seqs(frames) == [1, 2, 3, 4]
    await alice.disconnect()
    await bob.disconnect()


async def test_dropped_presence_diffs_become_a_fresh_presence_state(
    runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_room()
    monkeypatch.setattr(consumers, "OUTBOX_FRAMES", 0)
    bob = await joined("bob")
    monkeypatch.setattr(consumers, "OUTBOX_FRAMES", 2000)
    alice = await joined("alice")

    def sees_alice(frames: list[Frame]) -> bool:
        users: set[str] = {"bob"}
        for frame in frames:
            if frame["type"] == "presence_state":
                users = set(frame["users"])
            elif frame["type"] == "presence_diff":
                users = (users | set(frame["joins"])) - set(frame["leaves"])
        return "alice" in users

    await frames_until(bob, sees_alice)
    await alice.disconnect()
    await bob.disconnect()


async def test_a_hole_in_the_kept_log_gives_gap_never_a_silent_skip(runtime: Any) -> None:
    await make_room()
    alice = await joined("alice")
    await send_messages(alice, 6, "m")
    log_key = "chat:{room:lobby}:log"
    # Lost by Redis (a lagging replica promoted, say): seq 3 inside the kept range, and 6 at
    # the end of it.
    assert await runtime.redis.xdel(log_key, "3-0", "6-0") == 2
    late = await joined("late", after=1)
    frames = await frames_until(late, lambda fs: any(f.get("first_available") == 7 for f in fs))
    kinds = [(f["type"], f.get("seq", f.get("first_available"))) for f in frames]
    assert kinds == [
        ("message", 2),
        ("gap", 4),
        ("message", 4),
        ("message", 5),
        ("gap", 7),
    ]
    await send_messages(alice, 1, "after")
    frames = await frames_until(late, lambda fs: 7 in seqs(fs))
    assert seqs(frames) == [7]
    await alice.disconnect()
    await late.disconnect()


async def test_a_failing_log_read_is_retried(runtime: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    await make_room()
    alice = await joined("alice")
    await send_messages(alice, 3, "m")
    real_events = runtime.events
    failures = {"left": 2}

    async def flaky(slug: str, *, after: int, limit: int) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise redis.exceptions.ConnectionError("Redis went away")
        return await real_events(slug, after=after, limit=limit)

    monkeypatch.setattr(runtime, "events", flaky)
    late = await joined("late", after=0)
    frames = await frames_until(late, lambda fs: 3 in seqs(fs))
    assert seqs(frames) == [1, 2, 3] and failures["left"] == 0
    await alice.disconnect()
    await late.disconnect()


async def test_a_log_that_stays_unreadable_closes_with_1011(
    runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Never an open socket that receives nothing: the client resumes with after=.
    await make_room()
    alice = await joined("alice")
    await send_messages(alice, 2, "m")

    async def broken(slug: str, *, after: int, limit: int) -> Any:
        raise redis.exceptions.ConnectionError("Redis went away")

    monkeypatch.setattr(runtime, "events", broken)
    late = await joined("late", after=0)
    frames = await frames_until(late, lambda fs: False, timeout=10)
    assert frames[-1] == {"type": "closed", "code": 1011}
    await late.disconnect()
    assert caps_of(runtime).held_by("n:late") == 0
    await alice.disconnect()


async def test_an_error_after_attach_detaches(
    runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_room()

    async def broken_greeting(self: Any, last_seq: int, users: list[str]) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(consumers.RoomConsumer, "_greet", broken_greeting)
    ghost = await open_socket("ghost")
    assert await next_output(ghost) == {"type": "closed", "code": 1011}
    # Released at once, not when the client gets round to closing: no ghost in presence.
    assert runtime.fanout.connections == 0
    assert (await runtime.online(["lobby"]))["lobby"] == []
    assert caps_of(runtime).held_by("n:ghost") == 0
    await ghost.disconnect()


async def test_a_consumer_cancelled_by_the_server_releases_everything(runtime: Any) -> None:
    # daphne cancels an application that does not finish within its close timeout after the
    # client left (a command still waiting for its room): its slot, attachment, presence and
    # send loop must not outlive it.
    await make_room()
    frank = await joined("frank")
    assert caps_of(runtime).held_by("n:frank") == 1 and runtime.fanout.connections == 1
    frank.future.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(frank.future, 5)
    assert caps_of(runtime).held_by("n:frank") == 0
    assert runtime.fanout.connections == 0
    assert (await runtime.online(["lobby"]))["lobby"] == []


async def test_caps_refuse_with_4429_and_free_on_disconnect(runtime: Any, settings: Any) -> None:
    await make_room()
    settings.CHAT_MAX_SOCKETS_PER_USER = 2
    first, second = await joined("carol"), await joined("carol")
    third = await open_socket("carol")
    assert await next_output(third) == {"type": "closed", "code": 4429}
    await third.disconnect()
    await first.disconnect()
    again = await joined("carol")
    assert caps_of(runtime).held_by("n:carol") == 2
    await second.disconnect()
    await again.disconnect()
    assert caps_of(runtime).held_by("n:carol") == 0


async def test_address_cap(runtime: Any, settings: Any) -> None:
    await make_room()
    settings.CHAT_MAX_SOCKETS_PER_ADDRESS = 1
    dave = await joined("dave")
    erin = await open_socket("erin")  # the test communicator has no peer: one address for all
    assert await next_output(erin) == {"type": "closed", "code": 4429}
    await erin.disconnect()
    await dave.disconnect()
