"""The message archive (rooms/archive.py) on a real Redis and a real database: idempotent,
resumable, edits and deletes applied, and read through by the events API and the socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import AsyncClient

from chatsite.asgi import application
from cluster.commands import Command
from cluster.runtime import ClusterRuntime
from rooms import archive, services
from rooms.archive import Archiver, archived_upto, store_batch
from rooms.models import ArchiveCursor, Message, MessageChange

pytestmark = pytest.mark.django_db(transaction=True)  # async tests run in auto mode

HISTORY = 100  # CHAT_HISTORY_LIMIT's minimum: Redis keeps 100 to ~200 events (MAXLEN ~)


@pytest.fixture
async def small(redis_url: str) -> AsyncIterator[ClusterRuntime]:
    """A node whose Redis keeps only ~HISTORY events per room, no rate limit, and whose
    archiver does not run by itself (the tests drive it)."""
    from rooms.runtime import build_runtime, install

    previous = settings.CHAT_ARCHIVE_LAG_S
    settings.CHAT_ARCHIVE_LAG_S = 3600.0
    rt = build_runtime(
        redis_url,
        node_name="test-node",
        lease_ttl_ms=1500,
        history_limit=HISTORY,
        rate_limit=(1_000_000, 1.0),
    )
    await rt.start()
    install(rt)
    try:
        yield rt
    finally:
        install(None)
        await rt.stop()
        settings.CHAT_ARCHIVE_LAG_S = previous


async def room(slug: str = "lobby") -> None:
    await sync_to_async(services.room_create)(slug=slug)


async def send(rt: ClusterRuntime, count: int, slug: str = "lobby", start: int = 0) -> int:
    last = 0
    for i in range(start, start + count):
        ack = await rt.submit(slug, Command("send", "ann", f"c{i}", body=f"body {i}"))
        last = ack.seq
    return last


async def change(rt: ClusterRuntime, kind: str, target: str, body: str = "") -> int:
    command = Command(kind, "ann", f"{kind}-{target}-{body}", body=body, id=target)  # type: ignore[arg-type]
    return (await rt.submit("lobby", command)).seq


@sync_to_async
def rows(slug: str = "lobby") -> list[tuple[int, str, bool]]:
    found = Message.objects.filter(room__slug=slug).order_by("seq")
    return [(m.seq, m.body, m.deleted is not None) for m in found]


@sync_to_async
def change_seqs(slug: str = "lobby") -> list[int]:
    return list(
        MessageChange.objects.filter(room__slug=slug).order_by("seq").values_list("seq", flat=True)
    )


async def all_events(client: AsyncClient, slug: str = "lobby", limit: int = 1000) -> Any:
    """Every event through ``?after=``, a page at a time; the pages' bodies too."""
    after, found, bodies = 0, [], []
    for _ in range(100):
        body = (await client.get(f"/api/rooms/{slug}/events?after={after}&limit={limit}")).json()
        bodies.append(body)
        if not body["events"]:
            break
        found.extend(body["events"])
        after = body["events"][-1]["seq"]
    return found, bodies


# -- writes ---------------------------------------------------------------------------------


async def test_archiving_twice_writes_each_event_once(small: ClusterRuntime) -> None:
    await room()
    last = await send(small, 30)
    await change(small, "edit", "m3", "three, fixed")
    await change(small, "delete", "m4")
    first = Archiver(batch=7)
    assert await first.archive_room(small.log, "lobby") == last + 2
    archived = await rows()
    assert len(archived) == 30 and archived[2] == (3, "three, fixed", False)
    assert archived[3][2] is True  # m4 deleted
    assert await change_seqs() == [31, 32]
    # A re-run from scratch (a crash before the cursor was seen, a second node) changes nothing.
    again = Archiver(batch=5)
    again._cursors["lobby"] = 0
    await again.archive_room(small.log, "lobby")
    assert await rows() == archived and await change_seqs() == [31, 32]
    assert await archived_upto("lobby") == last + 2


async def test_two_archivers_at_once_never_duplicate(small: ClusterRuntime) -> None:
    await room()
    await send(small, 60)
    await change(small, "edit", "m10", "first edit")
    await change(small, "edit", "m10", "second edit")
    a, b = Archiver(batch=9), Archiver(batch=4)
    await asyncio.gather(a.archive_room(small.log, "lobby"), b.archive_room(small.log, "lobby"))
    archived = await rows()
    assert [seq for seq, _, _ in archived] == list(range(1, 61))
    assert archived[9][1] == "second edit"
    assert await change_seqs() == [61, 62]
    assert await ArchiveCursor.objects.filter(room__slug="lobby").acount() == 1


async def test_two_archivers_in_two_threads_at_once(small: ClusterRuntime) -> None:
    """Two database connections writing overlapping batches at the same moment (each thread
    its own connection): the cursor lock makes one wait, and the rows come out the same."""
    import threading

    from django.db import connection

    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        # Shared-cache in-memory SQLite (the test database) answers a second writer "table is
        # locked" at once instead of waiting: a file (a node's) or PostgreSQL waits.
        pytest.skip("needs a database that waits for its write lock")
    await room()
    await send(small, 40)
    for i in range(1, 41, 3):
        await change(small, "edit", f"m{i}", f"edit {i}")
    events = (await small.log.read("lobby", after=0, limit=1000)).events
    start = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def archiver(size: int) -> None:
        try:
            start.wait()
            for i in range(0, len(events), size):
                chunk = events[i : i + size]
                store_batch("lobby", chunk, int(chunk[-1]["seq"]))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=archiver, args=(n,)) for n in (7, 5)]
    for t in threads:
        t.start()
    for t in threads:
        await asyncio.to_thread(t.join, 30)
    assert not errors, errors
    archived = await rows()
    assert [seq for seq, _, _ in archived] == list(range(1, 41))
    assert all(body == f"edit {seq}" for seq, body, _ in archived if seq % 3 == 1)
    assert await change_seqs() == list(range(41, 55))
    assert await archived_upto("lobby") == 54


async def test_rooms_with_news_share_one_transaction(small: ClusterRuntime) -> None:
    await room()
    await room("side")
    await send(small, 3)
    await send(small, 4, slug="side")
    archiver = Archiver(batch=50)
    assert await archiver.archive_rooms(small.log, ["lobby", "side"]) == {"lobby": 3, "side": 4}
    assert archiver.batches == 1 and archiver.archived == 7
    assert await archiver.archive_rooms(small.log, ["lobby", "side"]) == {"lobby": 3, "side": 4}
    assert archiver.batches == 1  # nothing new: no transaction at all


async def test_a_purged_history_leaves_the_archive_and_stays_gone(small: ClusterRuntime) -> None:
    await room()
    await send(small, 5)
    stale = (await small.log.read("lobby", after=0)).events  # a batch read before the purge
    await Archiver().archive_room(small.log, "lobby")
    r = await services.Room.objects.aget(slug="lobby")
    assert await sync_to_async(services.room_purge_history)(r) == 5
    assert await rows() == []
    await sync_to_async(store_batch)("lobby", stale, 5)  # an archiver late with it
    assert await rows() == []
    body = (await AsyncClient().get("/api/rooms/lobby/events?after=0")).json()
    assert body["events"] == []


async def test_an_older_edit_applied_late_never_overwrites_a_newer_one(
    small: ClusterRuntime,
) -> None:
    """Two archivers can commit batches out of order: the newest edit's text wins anyway."""
    await room()
    await send(small, 3)
    await change(small, "edit", "m1", "older")
    await change(small, "edit", "m1", "newer")
    page = await small.log.read("lobby", after=0)
    by_seq = {e["seq"]: e for e in page.events}
    await sync_to_async(store_batch)("lobby", [by_seq[1], by_seq[2], by_seq[3], by_seq[5]], 5)
    await sync_to_async(store_batch)("lobby", [by_seq[4]], 4)  # the older edit, late
    assert (await rows())[0] == (1, "newer", False)
    assert await archived_upto("lobby") == 5  # the cursor never goes back


async def test_edits_and_deletes_in_a_later_batch_reach_archived_rows(
    small: ClusterRuntime,
) -> None:
    await room()
    await send(small, 5)
    archiver = Archiver()
    await archiver.archive_room(small.log, "lobby")
    assert (await rows())[1] == (2, "body 1", False)
    await change(small, "edit", "m2", "edited later")
    await change(small, "delete", "m5")
    await archiver.archive_room(small.log, "lobby")
    archived = await rows()
    assert archived[1] == (2, "edited later", False) and archived[4][2] is True
    message = await Message.objects.aget(room__slug="lobby", seq=2)
    assert message.edited is not None and message.edited_seq == 6


async def test_a_crash_mid_batch_leaves_nothing_and_the_next_run_resumes(
    small: ClusterRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    await room()
    await send(small, 20)
    archiver = Archiver(batch=8)
    await archiver.archive_room(small.log, "lobby")
    assert await archived_upto("lobby") == 20
    await send(small, 10, start=20)
    await change(small, "edit", "m25", "x")

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(ArchiveCursor.objects, "filter", crash)
    with pytest.raises(RuntimeError):
        await Archiver(batch=50).archive_room(small.log, "lobby")
    monkeypatch.undo()
    # The batch's transaction rolled back: no rows above 20, the cursor still at 20.
    assert [seq for seq, _, _ in await rows()] == list(range(1, 21))
    assert await archived_upto("lobby") == 20
    resumed = Archiver(batch=50)  # a new process: it knows only what the database holds
    assert await resumed.archive_room(small.log, "lobby") == 31
    assert resumed.archived == 11  # read from the cursor on, not from the start
    assert [seq for seq, _, _ in await rows()] == list(range(1, 31))
    assert (await rows())[24][1] == "x"


async def test_the_runtime_worker_archives_owned_rooms_within_the_bound(
    small: ClusterRuntime,
) -> None:
    await room()
    await room("side")
    await send(small, 12)
    await send(small, 3, slug="side")
    archiver = Archiver(lag_s=0.2)
    task = asyncio.create_task(archiver.run(small))
    try:
        async with asyncio.timeout(5):
            while await archived_upto("lobby") < 12 or await archived_upto("side") < 3:
                await asyncio.sleep(0.05)
        assert archiver.lag_s < 5
        from rooms import metrics

        scraped, _ = metrics.render(small)  # the runtime's own archiver (an hour apart here)
        assert b"chat_archive_lag_seconds" in scraped and b"chat_archived_events" in scraped
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


# -- reads ----------------------------------------------------------------------------------


async def test_the_events_api_reads_trimmed_history_from_the_archive(
    small: ClusterRuntime,
) -> None:
    await room()
    await send(small, 5)
    await change(small, "edit", "m3", "three, edited")  # seq 6
    await change(small, "delete", "m4")  # seq 7
    archiver = Archiver()
    for start in range(5, 500, 45):  # archived as it goes, before Redis trims it
        await send(small, 45, start=start)
        await archiver.archive_room(small.log, "lobby")
    await send(small, 5, start=500)  # newer than the archive: only Redis has them
    kept = await small.log.read("lobby", after=0, limit=1)
    assert kept.first_available > 300, "Redis trimmed less than the test needs"
    client = AsyncClient()
    found, bodies = await all_events(client, limit=120)
    assert [e["seq"] for e in found] == list(range(1, 508))
    assert all("first_available" not in body for body in bodies), bodies[0]
    # An archived message reads back with its current text; its edits follow at their seqs.
    assert found[2]["body"] == "three, edited" and found[5]["type"] == "edit"
    assert found[5]["body"] == "three, edited" and found[5]["id"] == "m3"
    assert found[6] | {"ts": 0} == {
        "type": "delete", "room": "lobby", "id": "m4", "user": "ann", "ts": 0,
        "author": "n:ann", "seq": 7,
    }  # fmt: skip
    assert found[0] | {"ts": 0} == {
        "type": "message", "room": "lobby", "user": "ann", "body": "body 0", "ts": 0,
        "client_id": "c0", "author": "n:ann", "id": "m1", "seq": 1,
    }  # fmt: skip
    # Paging backwards reaches the archive too: the M events just below N, oldest first.
    page = (await client.get("/api/rooms/lobby/events?before=51&limit=10")).json()
    assert [e["seq"] for e in page["events"]] == list(range(41, 51))
    assert "first_available" not in page
    newest = (await client.get("/api/rooms/lobby/events?before=999999&limit=3")).json()
    assert [e["seq"] for e in newest["events"]] == [505, 506, 507]


async def test_what_neither_holds_is_still_a_gap(small: ClusterRuntime) -> None:
    await room()
    await send(small, 400)  # trimmed before anything was archived
    client = AsyncClient()
    body = (await client.get("/api/rooms/lobby/events?after=0&limit=5")).json()
    first_kept = (await small.log.read("lobby", after=0, limit=1)).first_available
    assert body["first_available"] == first_kept > 1
    await Archiver().archive_room(small.log, "lobby")  # it archives what is left
    assert (await rows())[0][0] == first_kept
    body = (await client.get("/api/rooms/lobby/events?after=0&limit=5")).json()
    assert body["first_available"] == first_kept
    assert [e["seq"] for e in body["events"]] == list(range(first_kept, first_kept + 5))


async def test_a_resuming_socket_reads_the_archive_without_a_gap(small: ClusterRuntime) -> None:
    await room()
    archiver = Archiver()
    for start in range(0, 300, 50):
        await send(small, 50, start=start)
        await archiver.archive_room(small.log, "lobby")
    assert (await small.log.read("lobby", after=0, limit=1)).first_available > 50
    late = WebsocketCommunicator(application, "/ws/rooms/lobby/?name=late&after=40")
    assert (await late.connect(timeout=5))[0]
    seen: list[int] = []
    for _ in range(400):
        frame = json.loads(await late.receive_from(timeout=5))
        assert frame["type"] != "gap", frame
        if frame["type"] == "message":
            seen.append(frame["seq"])
            if frame["seq"] == 300:
                break
    assert seen == list(range(41, 301))
    await late.disconnect()


# -- Redis loses the room -----------------------------------------------------------------


async def test_after_a_flushall_the_next_owner_refills_from_the_archive(
    small: ClusterRuntime,
) -> None:
    await room()
    await send(small, 60)
    await change(small, "delete", "m59")  # seq 61
    await Archiver().archive_room(small.log, "lobby")
    reserved = (await services.Room.objects.aget(slug="lobby")).seq_high_water
    await small.redis.flushall()  # a Redis restarted without persistence
    ack = None
    async with asyncio.timeout(10):  # the node notices it was presumed dead, then recovers
        while ack is None:
            try:
                ack = await small.submit("lobby", Command("send", "ann", "after", body="new"))
            except Exception:
                await asyncio.sleep(0.05)
    assert ack.seq > max(reserved, 61)
    refilled = await small.log.read("lobby", after=0, limit=1000)
    assert [e["seq"] for e in refilled.events] == [*range(1, 62), ack.seq]
    assert refilled.missing == [(62, ack.seq - 1)]  # issued perhaps, never archived: a gap
    # The refilled log knows m59 was deleted: it cannot be edited.
    with pytest.raises(Exception, match="deleted"):
        await small.submit("lobby", Command("edit", "ann", "e1", body="x", id="m59"))
    found, _ = await all_events(AsyncClient())
    assert [e["seq"] for e in found] == [*range(1, 62), ack.seq]
    # A re-send of an archived message (its ack lost with Redis) is acked again, not posted.
    again = await small.submit("lobby", Command("send", "ann", "c7", body="body 7"))
    assert again.duplicate and again.seq == 8 and again.id == "m8"


async def test_the_archive_is_a_witness_of_issued_seqs() -> None:
    from cluster.seq_recovery import start_position

    # Redis kept seq 40 under the newest reservation, but the archive holds 60: it lost a
    # suffix, and seqs go on above everything archived (and reserved).
    p = start_position(redis_last=40, redis_reserved=100, db_reserved=100, archived=60)
    assert p.lost and p.last_seq == 100
    p = start_position(redis_last=60, redis_reserved=100, db_reserved=100, archived=60)
    assert not p.lost and p.last_seq == 60


# -- retention ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_prune_history_deletes_only_old_messages() -> None:
    from datetime import UTC, datetime, timedelta
    from io import StringIO

    from django.core.management import CommandError, call_command

    r, _ = services.room_create(slug="old")
    now = datetime.now(tz=UTC)
    for seq, age in ((1, 40), (2, 31), (3, 29), (4, 1)):
        Message.objects.create(
            room=r, seq=seq, message_id=f"m{seq}", author_name="a", body="b",
            created=now - timedelta(days=age),
        )  # fmt: skip
    MessageChange.objects.create(
        room=r, seq=5, message=Message.objects.get(seq=1), kind="delete", author_name="a",
        created=now,
    )  # fmt: skip
    out = StringIO()
    call_command("prune_history", "--days", "30", "--dry-run", stdout=out)
    assert "would delete 2" in out.getvalue() and Message.objects.count() == 4
    call_command("prune_history", "--days", "30", stdout=out)
    assert sorted(Message.objects.values_list("seq", flat=True)) == [3, 4]
    assert MessageChange.objects.count() == 0
    for bad in ("0", "-3", "x", "1.5", "٣", "9999999"):
        with pytest.raises(CommandError, match="--days"):
            call_command("prune_history", "--days", bad, stdout=out)
    assert Message.objects.count() == 2  # nothing lost to a bad value
    settings_days = settings.CHAT_RETENTION_DAYS
    try:
        settings.CHAT_RETENTION_DAYS = None
        call_command("prune_history", stdout=out)
        assert "kept forever" in out.getvalue()
    finally:
        settings.CHAT_RETENTION_DAYS = settings_days
    assert Message.objects.count() == 2


def test_malformed_archive_settings_fail_with_their_name(tmp_path: Any) -> None:
    import subprocess
    import sys

    from tests.support.nodes import ROOT

    probe = "import django; django.setup()"
    for name, value in (
        ("CHAT_ARCHIVE_LAG_S", "soon"),
        ("CHAT_ARCHIVE_LAG_S", "0"),
        ("CHAT_ARCHIVE_LAG_S", "nan"),
        ("CHAT_RETENTION_DAYS", "forever-ish"),
        ("CHAT_RETENTION_DAYS", "0"),
    ):
        env = {
            "PATH": "/usr/bin:/bin",
            "DJANGO_SETTINGS_MODULE": "chatsite.settings",
            "CHAT_DATA_DIR": str(tmp_path),
            name: value,
        }
        result = subprocess.run(
            [sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert result.returncode != 0, (name, value)
        assert name in result.stderr, (name, value, result.stderr[-500:])


def test_dedupe_user_follows_the_identity_rules() -> None:
    assert archive.dedupe_user({"author": "u:7", "user": "ann"}) == "u:7"
    assert archive.dedupe_user({"author": "g:abc", "user": "ann"}) == "g:abc"
    assert archive.dedupe_user({"author": "c:conn", "user": "ann"}) == "n:ann"
    assert archive.dedupe_user({"author": None, "user": "ann"}) == "n:ann"


def test_hooks_are_what_the_runtime_gets() -> None:
    hooks = archive.cluster_hooks()
    assert hooks.read is archive.read and hooks.high is archive.archived_upto
    assert hooks.message is archive.find_message


async def test_messages_older_than_the_log_stay_editable_through_the_archive(
    small: ClusterRuntime,
) -> None:
    await room()
    archiver = Archiver()
    for start in range(0, 300, 50):  # beyond the log (~100-200) and the state window (200)
        await send(small, 50, start=start)
        await archiver.archive_room(small.log, "lobby")
    assert (await small.log.read("lobby", after=0, limit=1)).first_available > 3
    edit_seq = await change(small, "edit", "m1", "edited long after")
    await change(small, "delete", "m2")
    await archiver.archive_room(small.log, "lobby")
    assert (await rows())[:2] == [(1, "edited long after", False), (2, "body 1", True)]
    assert (await Message.objects.aget(room__slug="lobby", seq=1)).edited_seq == edit_seq
    # A deleted one is refused like one the log keeps; an unknown one is not found.
    with pytest.raises(Exception, match="deleted"):
        await change(small, "edit", "m2", "again")
    with pytest.raises(Exception, match="no message"):
        await change(small, "edit", "m99999", "nope")
