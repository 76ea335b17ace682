"""The room server answers every command, whatever happens to it (issue 8, holes 1, 2, 4, 9, 10).

Real Redis, in-process runtimes: what a socket would send, straight to the runtime.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cluster.commands import Ack, Command
from cluster.config import ClusterConfig
from cluster.errors import CommandError, NotOwner, RoomUnavailable
from cluster.room_server import RoomServerState
from cluster.runtime import ClusterRuntime

SEND_TIMEOUT_MS = 1500


def make(name: str, url: str, **config: Any) -> ClusterRuntime:
    options: dict[str, Any] = {"send_timeout_ms": SEND_TIMEOUT_MS, "rate_limit": (1000, 1.0)}
    options.update(config)
    return ClusterRuntime(ClusterConfig(name, lease_ttl_ms=1500, **options), url)


@pytest.fixture
async def node(redis_url: str) -> AsyncIterator[ClusterRuntime]:
    rt = make("a", redis_url, state_window=5)
    await rt.start()
    yield rt
    await rt.stop()


def send(user: str, client_id: str, body: str = "hi") -> Command:
    return Command("send", user, client_id, body=body)


async def test_malformed_message_ids_are_not_found_and_never_crash_the_room(
    node: ClusterRuntime,
) -> None:
    await node.submit("room", send("u", "c0"))
    server = node.supervisor.servers["room"]
    poison = ["m²", "m" + "9" * 5000, "m99999999999999999999", "m١٢", "m0", "m01", "x", "m-1"]
    for i, bad in enumerate(poison):
        for kind in ("delete", "edit"):
            command = Command(kind, "u", f"bad-{kind}-{i}", body="x", id=bad)  # type: ignore[arg-type]
            with pytest.raises(CommandError) as refused:
                await node.submit("room", command)
            assert refused.value.code == "not_found", (bad, refused.value)
    assert node.supervisor.servers["room"] is server  # same server, same epoch: no restart
    assert server.status is RoomServerState.SERVING
    assert (await node.submit("room", send("u", "c1"))).seq == 2


async def test_commands_queued_on_a_crashing_server_are_all_answered(
    node: ClusterRuntime,
) -> None:
    await node.submit("room", send("u", "c0"))
    server = node.supervisor.servers["room"]
    release = asyncio.Event()
    real_handle = server._handle

    async def crash_after_release(command: Command) -> Ack:
        if command.client_id == "poison":
            await release.wait()
            raise RuntimeError("injected crash")
        return await real_handle(command)

    server._handle = crash_after_release  # type: ignore[method-assign]
    poison = asyncio.ensure_future(node.submit("room", send("u", "poison")))
    await asyncio.sleep(0.05)  # the poison command is in hand
    queued = [asyncio.ensure_future(node.submit("room", send("u", f"q{i}"))) for i in range(5)]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    release.set()
    results = await asyncio.wait_for(
        asyncio.gather(poison, *queued, return_exceptions=True), SEND_TIMEOUT_MS / 1000 + 1
    )
    assert time.monotonic() - started < SEND_TIMEOUT_MS / 1000 + 1
    assert isinstance(results[0], CommandError) and results[0].code == "unavailable"
    # The queued ones were retried at the restarted server: every one acked, in order.
    seqs = [r.seq for r in results[1:] if isinstance(r, Ack)]
    assert sorted(seqs) == [2, 3, 4, 5, 6], results  # each applied once, none lost
    assert node.supervisor.servers["room"] is not server


async def test_stop_answers_the_command_in_hand(node: ClusterRuntime) -> None:
    await node.submit("room", send("u", "c0"))
    server = node.supervisor.servers["room"]
    never = asyncio.Event()

    async def hang(command: Command) -> Ack:
        await never.wait()
        raise AssertionError("unreachable")

    server._handle = hang  # type: ignore[method-assign]
    in_hand = asyncio.ensure_future(server.submit(send("u", "stuck")))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(server.submit(send("u", "behind")))
    await asyncio.sleep(0.01)
    await asyncio.wait_for(server.stop(), 10)
    with pytest.raises(RoomUnavailable):
        await asyncio.wait_for(in_hand, 1)
    with pytest.raises(NotOwner):
        await asyncio.wait_for(queued, 1)


async def test_a_resent_delete_is_acked_again_not_refused(node: ClusterRuntime) -> None:
    sent = await node.submit("room", send("u", "c0"))
    delete = Command("delete", "u", "del-1", id=sent.id)
    first = await node.submit("room", delete)
    again = await node.submit("room", delete)  # the ack was lost; the client re-sends
    assert (again.seq, again.id) == (first.seq, first.id)
    # After a restart the server has no memory of it: Redis's dedupe answers.
    await node.supervisor.handoff("room", None)
    later = await node.submit("room", delete)
    assert (later.seq, later.id) == (first.seq, first.id)


async def test_a_resend_is_acked_even_when_rate_limited(redis_url: str) -> None:
    rt = make("a", redis_url, rate_limit=(3, 60.0))
    await rt.start()
    try:
        acks = [await rt.submit("room", send("u", f"c{i}")) for i in range(3)]
        with pytest.raises(CommandError) as limited:
            await rt.submit("room", send("u", "c3"))
        assert limited.value.code == "rate_limited"
        assert (await rt.submit("room", send("u", "c1"))).seq == acks[1].seq
        await rt.supervisor.handoff("room", None)  # a new server: the limiter starts afresh
        for i in range(3):
            await rt.submit("room", send("u", f"d{i}"))
        assert (await rt.submit("room", send("u", "c0"))).seq == acks[0].seq  # from Redis
    finally:
        await rt.stop()


async def test_expired_commands_are_dropped_without_spending_tokens(redis_url: str) -> None:
    rt = make("a", redis_url, rate_limit=(1, 60.0))
    await rt.start()
    try:
        server = await rt.supervisor.activate("room")
        past = asyncio.get_running_loop().time() - 0.001
        with pytest.raises(RoomUnavailable):
            await server.submit(send("u", "stale"), deadline=past)
        # The one token is still there for the command somebody waits for.
        assert (await rt.submit("room", send("u", "fresh"))).seq == 1
    finally:
        await rt.stop()


async def test_edit_and_delete_outside_the_window_read_no_log_range(node: ClusterRuntime) -> None:
    first = await node.submit("room", send("u", "c0", "old"))
    for i in range(1, 30):  # the window holds 5
        await node.submit("room", send("u", f"c{i}"))

    async def no_scan(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a command read a range of the log")

    node.log.read_all = no_scan  # type: ignore[method-assign]
    node.log.read = no_scan  # type: ignore[method-assign]
    with pytest.raises(CommandError) as forbidden:
        await node.submit("room", Command("edit", "other", "e0", body="x", id=first.id))
    assert forbidden.value.code == "forbidden"
    await node.submit("room", Command("edit", "u", "e1", body="new", id=first.id))
    await node.submit("room", Command("delete", "u", "d1", id=first.id))
    with pytest.raises(CommandError) as gone:
        await node.submit("room", Command("edit", "u", "e2", body="again", id=first.id))
    assert gone.value.code == "not_found"


async def test_an_owner_that_never_answers_gives_unavailable_in_time(redis_url: str) -> None:
    a, b = make("a", redis_url), make("b", redis_url)
    await a.start()
    await b.start()
    try:
        from cluster.placement import preferred_node

        slug = next(
            s for s in (f"r{i}" for i in range(100)) if preferred_node(s, ["a", "b"]) == "b"
        )
        await b.submit(slug, send("u", "c0"))
        hang = asyncio.Event()

        async def never(op: str, payload: dict[str, Any]) -> dict[str, Any]:
            await hang.wait()
            return {}

        b.router.serve = never  # type: ignore[method-assign]
        started = time.monotonic()
        with pytest.raises(CommandError) as failed:
            await asyncio.wait_for(a.submit(slug, send("v", "c1")), 10)
        assert failed.value.code == "unavailable"
        assert time.monotonic() - started < SEND_TIMEOUT_MS / 1000 + 1
    finally:
        hang.set()
        await a.stop()
        await b.stop()


async def test_membership_changes_are_seen_while_a_listener_is_busy(redis_url: str) -> None:
    a, b = make("a", redis_url), make("b", redis_url)
    busy = asyncio.Event()
    release = asyncio.Event()

    async def slow_listener(joined: set[str], left: set[str]) -> None:
        if "b" in joined:
            busy.set()
            await release.wait()  # a rebalance that takes long

    a.membership.add_listener(slow_listener)
    await a.start()
    try:
        await b.start()
        await asyncio.wait_for(busy.wait(), 5)
        await b.stop()  # leaves at once
        async with asyncio.timeout(2):
            while a.membership.is_live("b"):
                await asyncio.sleep(0.02)
    finally:
        release.set()
        await a.stop()


async def test_text_that_is_not_unicode_is_refused_where_it_enters(node: ClusterRuntime) -> None:
    await node.submit("room", send("u", "c0"))
    server = node.supervisor.servers["room"]
    for command in (send("u", "c1", "\ud800"), send("u", "c\udfff")):
        with pytest.raises(CommandError) as refused:
            await node.submit("room", command)
        assert refused.value.code == "bad_request"
    assert node.supervisor.servers["room"] is server


async def test_the_cluster_view_runs_no_refresh(node: ClusterRuntime) -> None:
    async def no_refresh() -> None:
        raise AssertionError("an HTTP request ran a membership refresh (and its listeners)")

    node.membership.refresh = no_refresh  # type: ignore[method-assign]
    await node.submit("room", send("u", "c0"))
    view = await node.cluster_view()
    assert [n["name"] for n in view["nodes"]] == ["a"]
    assert view["rooms"] == [{"slug": "room", "owner": "a", "epoch": 1}]
