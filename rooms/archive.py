"""The message archive: every room's log copied into the database, write-behind.

Redis keeps each room's newest events (``CHAT_HISTORY_LIMIT``) and is the truth for them; the
archive keeps everything, so history outlives trimming and a Redis that lost its data.

- **Who archives a room**: the node that owns its lease (it serves the room's writes, so its
  log is warm and its ``last_seq`` says in memory whether anything is new). A room that leaves
  the node (hand-off, passivation, a lost lease) gets one last pass there. Two archivers may
  overlap briefly during a move, or a fenced node may not know yet: harmless, because...
- **Every write is idempotent**: a transaction locks its rooms' cursors first and skips the
  events they already cover; rows are unique on (room, seq) and inserted with "ignore
  conflicts"; an edit applies only over an older edit (``edited_seq``), a delete only once; the
  cursor is only ever raised. Re-running a batch, or two archivers running the same batch in
  any order, leaves the same rows, and never brings back rows a purge or retention removed.
- **Resumable**: each transaction (up to ``BATCH`` events of one or more rooms, their edits and
  deletes applied, their cursors raised) is all or nothing; after any crash the next archiver
  starts above ``ArchiveCursor.upto``, read from the database. Nothing is kept anywhere else.
- **Lag**: a pass over the node's rooms starts every half ``CHAT_ARCHIVE_LAG_S``; it reads each
  room from its archived seq to its newest and writes up to ``BATCH`` events (of any rooms) per
  transaction. An event is archived at most one interval plus one pass after its append: within
  the bound while a pass takes less than half of it (a longer pass is logged). ``Archiver.lag_s``
  (the newest batch's oldest event's age when it committed) is exported as a metric.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import Min, Q, Value
from django.db.models.functions import Greatest

from cluster.events import Event, seq_of_message_id
from cluster.history import Archive, ArchivedPage
from cluster.log import RoomLog
from cluster.runtime import ClusterRuntime

from .models import ArchiveCursor, Message, MessageChange, Room

logger = logging.getLogger("rooms.archive")

# Events per transaction: large enough that a busy room catches up in few commits, small
# enough that one transaction stays short (SQLite holds its single write lock through it).
BATCH = 500
# Batches one room gets per pass before the next room's turn (the rest comes next pass).
BATCHES_PER_PASS = 20
MAX_BACKOFF_S = 5.0  # between failed passes (the database or Redis down)


def _when(event: Event) -> datetime:
    ts = event.get("ts")
    seconds = ts / 1000 if isinstance(ts, int | float) and ts > 0 else time.time()
    return datetime.fromtimestamp(seconds, tz=UTC)


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


# -- writes ---------------------------------------------------------------------------------


# A slice of one room's log to archive: (room, its events oldest first, the seq it covers).
Slice = tuple[str, list[Event], int]


def store_slices(slices: list[Slice]) -> dict[str, int]:
    """Archive each slice's events and raise its room's cursor to the slice's ``upto``, all in
    one transaction; returns each room's cursor afterwards. Idempotent (see above). A room
    with no row in the database (deleted since) is skipped: its ``upto`` is returned."""
    slugs = {slug for slug, _, _ in slices}
    ids = dict(Room.objects.filter(slug__in=slugs).values_list("slug", "pk"))
    done = {slug: upto for slug, _, upto in slices if slug not in ids}
    with transaction.atomic():
        # The cursors first, locked (PostgreSQL; SQLite's first write takes its one write
        # lock): a second archiver of the same rooms waits here, then skips what this one
        # applied, and a purge or a retention run is never undone by a batch read before it.
        ArchiveCursor.objects.bulk_create(
            [ArchiveCursor(room_id=pk) for pk in ids.values()], ignore_conflicts=True
        )
        floors = dict(
            ArchiveCursor.objects.select_for_update()
            .filter(room_id__in=ids.values())
            .values_list("room_id", "upto")
        )
        slices = [
            (slug, [e for e in events if int(e["seq"]) > floors.get(ids[slug], 0)], upto)
            for slug, events, upto in slices
            if slug in ids
        ]
        messages = [
            _message_row(ids[slug], e)
            for slug, events, _ in slices
            if slug in ids
            for e in events
            if e.get("type") == "message"
        ]
        Message.objects.bulk_create(messages, ignore_conflicts=True)
        for slug, events, _ in slices:
            changes = [e for e in events if e.get("type") in ("edit", "delete")]
            if changes and slug in ids:
                _apply_changes(ids[slug], changes)
        for slug, _, upto in slices:
            if slug in ids:
                ArchiveCursor.objects.filter(room_id=ids[slug], upto__lt=upto).update(upto=upto)
        now = dict(
            ArchiveCursor.objects.filter(room_id__in=ids.values()).values_list("room__slug", "upto")
        )
    return {**done, **{slug: int(upto) for slug, upto in now.items()}}


def purge_room(room_id: int, upto: int) -> int:
    """Forget the room's archived events up to ``upto`` (its history was purged): the rows go
    and the cursor rises to ``upto``, so no archiver writes them back. Returns the messages
    deleted."""
    with transaction.atomic():
        ArchiveCursor.objects.bulk_create([ArchiveCursor(room_id=room_id)], ignore_conflicts=True)
        ArchiveCursor.objects.select_for_update().filter(room_id=room_id).update(
            upto=Greatest("upto", Value(upto))
        )
        MessageChange.objects.filter(room_id=room_id, message__seq__lte=upto).delete()
        deleted, _ = Message.objects.filter(room_id=room_id, seq__lte=upto).delete()
    return deleted


def store_batch(slug: str, events: list[Event], upto: int) -> int:
    """``store_slices`` for one room: returns its cursor afterwards."""
    return store_slices([(slug, events, upto)])[slug]


def _message_row(room_id: int, event: Event) -> Message:
    seq = int(event["seq"])
    return Message(
        room_id=room_id,
        seq=seq,
        message_id=str(event.get("id") or f"m{seq}")[:20],
        author=str(event.get("author") or "")[:80],
        author_name=str(event.get("user") or "")[:150],
        guest=bool(event.get("guest")),
        client_id=str(event.get("client_id") or "")[:100],
        body=str(event.get("body") or ""),
        created=_when(event),
    )


def _apply_changes(room_id: int, changes: list[Event]) -> None:
    targets = {seq_of_message_id(str(e.get("id", ""))) for e in changes}
    found = dict(
        Message.objects.filter(room_id=room_id, seq__in=[t for t in targets if t]).values_list(
            "seq", "pk"
        )
    )
    rows = []
    for event in changes:
        pk = found.get(seq_of_message_id(str(event.get("id", ""))) or 0)
        if pk is None:
            # Its message never reached the archive (trimmed before it was archived, or pruned
            # by retention): nothing to change. A read shows the seq as a gap.
            continue
        rows.append(
            MessageChange(
                room_id=room_id,
                seq=int(event["seq"]),
                message_id=pk,
                kind=str(event["type"]),
                author=str(event.get("author") or "")[:80],
                author_name=str(event.get("user") or "")[:150],
                guest=bool(event.get("guest")),
                moderator=bool(event.get("moderator")),
                body=str(event.get("body") or "") if event["type"] == "edit" else "",
                created=_when(event),
            )
        )
        if event["type"] == "edit":
            # Only over an older edit: archivers that apply edits out of order (a re-run, two
            # at once) leave the newest text. On PostgreSQL the WHERE is checked again against
            # a row another transaction just updated.
            Message.objects.filter(pk=pk).filter(
                Q(edited_seq__isnull=True) | Q(edited_seq__lt=int(event["seq"]))
            ).update(
                body=str(event.get("body") or ""), edited=_when(event), edited_seq=event["seq"]
            )
        else:
            Message.objects.filter(pk=pk, deleted__isnull=True).update(deleted=_when(event))
    MessageChange.objects.bulk_create(rows, ignore_conflicts=True)


def archived_upto_sync(slug: str) -> int:
    found = ArchiveCursor.objects.filter(room__slug=slug).values_list("upto", flat=True).first()
    return int(found or 0)


async def archived_upto(slug: str) -> int:
    """How far ``slug`` is archived (0: not at all): every event up to it was applied."""
    found = await ArchiveCursor.objects.filter(room__slug=slug).values_list("upto").afirst()
    return int(found[0]) if found else 0


# -- reads ----------------------------------------------------------------------------------


def read_sync(slug: str, after: int, upto: int, limit: int) -> ArchivedPage:
    """Archived events of ``slug`` with ``after < seq <= upto``, oldest first, at most ``limit``:
    messages (with their current text) and the edits and deletes that changed them, each at
    its own seq, as the log had them."""
    messages = list(
        Message.objects.filter(room__slug=slug, seq__gt=after, seq__lte=upto).order_by("seq")[
            :limit
        ]
    )
    changes = list(
        MessageChange.objects.filter(room__slug=slug, seq__gt=after, seq__lte=upto)
        .select_related("message")
        .order_by("seq")[:limit]
    )
    found = sorted(
        [_message_event(slug, m) for m in messages] + [_change_event(slug, c) for c in changes],
        key=lambda e: int(e["seq"]),
    )[:limit]
    first = Message.objects.filter(room__slug=slug).aggregate(first=Min("seq"))["first"]
    return ArchivedPage(found, int(first or 0), archived_upto_sync(slug))


def _message_event(slug: str, m: Message) -> Event:
    event: Event = {
        "type": "message",
        "room": slug,
        "user": m.author_name,
        "body": m.body,
        "ts": _ms(m.created),
        "client_id": m.client_id or None,
        "author": m.author or None,
    }
    if m.guest:
        event["guest"] = True
    event["id"] = m.message_id
    event["seq"] = m.seq
    return event


def _change_event(slug: str, c: MessageChange) -> Event:
    event: Event = {"type": c.kind, "room": slug, "id": c.message.message_id}
    event["user"] = c.author_name
    if c.kind == "edit":
        event["body"] = c.body
    event["ts"] = _ms(c.created)
    event["author"] = c.author or None
    if c.guest:
        event["guest"] = True
    if c.moderator:
        event["moderator"] = True
    event["seq"] = c.seq
    return event


SEARCH_WORDS_MAX = 5


def search_sync(slug: str, words: list[str], *, before: int | None, limit: int) -> list[Event]:
    """Archived messages of ``slug`` (not deleted) whose current text holds every one of
    ``words`` (case-insensitive), newest first, below seq ``before`` if given.

    One portable query (a LIKE per word) on the room's rows, newest first along the
    (room, -seq) index: it reads the room's messages until ``limit`` match, so its cost grows
    with how far back the matches are (measured in docs/benchmarks.md)."""
    found = Message.objects.filter(room__slug=slug, deleted__isnull=True)
    for word in words[:SEARCH_WORDS_MAX]:
        found = found.filter(body__icontains=word)
    if before is not None:
        found = found.filter(seq__lt=before)
    return [_message_event(slug, m) for m in found.order_by("-seq")[:limit]]


async def search(slug: str, words: list[str], *, before: int | None, limit: int) -> list[Event]:
    return await sync_to_async(search_sync)(slug, words, before=before, limit=limit)


async def read(slug: str, after: int, upto: int, limit: int) -> ArchivedPage:
    return await sync_to_async(read_sync)(slug, after, upto, limit)


async def find_message(slug: str, message_id: str) -> tuple[Event | None, bool]:
    """The archived ``message`` event of ``message_id`` (None: not archived) and whether it was
    deleted: for edits and deletes of messages the log no longer keeps."""
    seq = seq_of_message_id(message_id)
    if seq is None:
        return None, False
    found = await Message.objects.filter(room__slug=slug, seq=seq).afirst()
    if found is None or found.message_id != message_id:
        return None, False
    return _message_event(slug, found), found.deleted is not None


def dedupe_user(event: Event) -> str | None:
    """Whose re-sends the archived ``message`` deduplicates (rooms.identity's ``dedupe_as``):
    the author's principal, except a ``?name=`` client's (``c:`` connection ids die with the
    socket), whose re-sends are its name's (``n:<name>``)."""
    author = str(event.get("author") or "")
    if not author or author.startswith("c:"):
        return f"n:{event.get('user', '')}"
    return author


def cluster_hooks() -> Archive:
    """What the cluster runtime gets (cluster.history): reads, the archived high water, and
    the archived messages that edits and deletes check."""
    return Archive(read=read, high=archived_upto, message=find_message, dedupe_user=dedupe_user)


# -- the archiver ---------------------------------------------------------------------------


class Archiver:
    """Copies the log of every room this node owns into the database (see the module doc).
    Runs as a worker of the runtime (``RuntimeHooks.workers``), which cancels it on stop."""

    def __init__(self, *, lag_s: float | None = None, batch: int = BATCH) -> None:
        self.lag_bound_s = float(lag_s if lag_s is not None else settings.CHAT_ARCHIVE_LAG_S)
        self.interval_s = max(0.05, self.lag_bound_s / 2)
        self.batch = batch
        self._cursors: dict[str, int] = {}  # room -> archived up to, as this node knows it
        self.archived = 0  # events written (or found written) by this archiver
        self.batches = 0
        self.lag_s = 0.0  # age of the oldest event of the newest batch when it committed
        self.passes = 0

    async def run(self, runtime: ClusterRuntime) -> None:
        """Pass over the owned rooms every ``interval_s``, start to start (a slow pass is
        followed at once by the next); a failing pass is logged and retried with backoff."""
        loop = asyncio.get_running_loop()
        backoff = self.interval_s
        while True:
            started = loop.time()
            try:
                await self.archive_owned(runtime)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("archive pass failed; retrying in %.2fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                continue
            backoff = self.interval_s
            took = loop.time() - started
            if took > self.interval_s:
                logger.warning(
                    "archive pass took %.2fs, more than half CHAT_ARCHIVE_LAG_S (%.2fs)",
                    took, self.lag_bound_s,
                )  # fmt: skip
            await asyncio.sleep(max(0.0, self.interval_s - took))

    async def archive_owned(self, runtime: ClusterRuntime) -> None:
        """One pass: every room this node serves that has events above its archived seq, and
        one last time each room that left the node since."""
        owned = {
            slug: server.last_seq
            for slug, server in list(runtime.supervisor.servers.items())
            if server.accepting
        }
        left = [s for s in self._cursors if s not in owned]
        due = [slug for slug, last in owned.items() if self._cursors.get(slug, -1) < last]
        await self.archive_rooms(runtime.log, due + left)
        for slug in left:
            self._cursors.pop(slug, None)
        self.passes += 1

    async def archive_room(self, log: RoomLog, slug: str) -> int:
        """Archive ``slug`` up to the log's newest; returns its archived seq."""
        return (await self.archive_rooms(log, [slug]))[slug]

    async def archive_rooms(self, log: RoomLog, slugs: list[str]) -> dict[str, int]:
        """Archive ``slugs`` from their archived seqs (the database's, the first time) up to the
        log's newest: a page of each room's log at a time, written ``batch`` events per
        transaction across rooms, at most ``BATCHES_PER_PASS`` pages per room. Returns each
        room's archived seq."""
        for slug in slugs:
            if slug not in self._cursors:
                self._cursors[slug] = await archived_upto(slug)
        # Where each room is read from next; ``_cursors`` moves only with what was committed.
        reading = {slug: self._cursors[slug] for slug in slugs}
        active = list(slugs)
        pending: list[Slice] = []
        for _ in range(BATCHES_PER_PASS):
            more = []
            for slug in active:
                cursor = reading[slug]
                page = await log.read(slug, after=cursor, limit=self.batch)
                if page.upto <= cursor:
                    continue
                if page.first_available > cursor + 1 and page.last_seq:
                    logger.warning(
                        "room %s: seqs %d-%d left the log before they were archived",
                        slug, cursor + 1, min(page.first_available - 1, page.upto),
                    )  # fmt: skip
                pending.append((slug, page.events, page.upto))
                reading[slug] = page.upto
                if len(page.events) >= self.batch:
                    more.append(slug)
                if sum(len(events) for _, events, _ in pending) >= self.batch:
                    await self._write(pending)
                    pending = []
            active = more
            if not active:
                break
        if pending:
            await self._write(pending)
        return {slug: self._cursors[slug] for slug in slugs}

    async def _write(self, slices: list[Slice]) -> None:
        cursors = await sync_to_async(store_slices)(slices)
        self._cursors.update(cursors)
        oldest = min((int(e.get("ts") or 0) for _, events, _ in slices for e in events), default=0)
        self.archived += sum(len(events) for _, events, _ in slices)
        self.batches += 1
        if oldest:
            self.lag_s = max(0.0, time.time() - oldest / 1000)


async def archive_worker(runtime: ClusterRuntime) -> None:
    """The runtime's worker (``RuntimeHooks.workers``): this node's archiver until it stops."""
    archiver = Archiver()
    runtime_archivers[runtime.node] = archiver
    try:
        await archiver.run(runtime)
    finally:
        runtime_archivers.pop(runtime.node, None)


# The archiver of each runtime in this process, by node name: for metrics and tests.
runtime_archivers: dict[str, Archiver] = {}


def prune(days: int, *, now: datetime | None = None, chunk: int = 5000) -> int:
    """Delete archived messages (and their edits and deletes) created more than ``days`` days
    ago, ``chunk`` rows per transaction; returns how many messages went."""
    cutoff = (now or datetime.now(tz=UTC)).timestamp() - days * 86400
    before = datetime.fromtimestamp(cutoff, tz=UTC)
    removed = 0
    # Bounded: what is old now, a chunk at a time (rows archived meanwhile are newer).
    rounds = Message.objects.filter(created__lt=before).count() // chunk + 1
    for _ in range(rounds):
        ids = list(Message.objects.filter(created__lt=before).values_list("pk", flat=True)[:chunk])
        if not ids:
            break
        with transaction.atomic():
            MessageChange.objects.filter(message_id__in=ids).delete()
            removed += Message.objects.filter(pk__in=ids).delete()[1].get("rooms.Message", 0)
    return removed
