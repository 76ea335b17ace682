"""History older than the Redis log: reads that reach into an archive kept elsewhere.

The log (``cluster.log``) is the hot tail and the truth for the newest events; the application
may keep every event in a database (``rooms.archive``) and hand the cluster two hooks: the
highest seq it archived for a room, and a read of archived events by seq. Reads use the archive
only for what the log no longer holds (trimmed, or lost by Redis), so the hot path stays on
Redis; a room server that finds Redis emptier than the archive puts the archive's tail back
before it takes commands, and seqs go on above everything archived (``seq_recovery``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import events
from .log import LogRange, RoomLog, holes

# Archived events a new owner writes back into an emptied log (the rest stay readable through
# the archive): enough for the room's state window and a resuming client's recent history.
REFILL_EVENTS = 1000


@dataclass(frozen=True)
class ArchivedPage:
    events: list[events.Event]  # archived events of the range asked, oldest first
    first: int  # the lowest seq the archive holds for the room (0: none)
    high: int  # the highest seq it has archived (every event up to it was applied)


# (slug, after, upto, limit) -> archived events with after < seq <= upto, at most limit.
ReadArchive = Callable[[str, int, int, int], Awaitable[ArchivedPage]]
ArchivedHigh = Callable[[str], Awaitable[int]]  # slug -> the highest seq archived (0: none)
# (slug, message id) -> the archived ``message`` event that created it (None: not archived),
# and whether it was deleted since: what ``RoomLog.message`` answers for a message it keeps.
FindMessage = Callable[[str, str], Awaitable[tuple[events.Event | None, bool]]]
# A ``message`` event -> whose re-sends its client_id deduplicates (None: nobody's): the
# application's rule, since it decides which principal a command is deduplicated as.
DedupeUser = Callable[[events.Event], str | None]


@dataclass(frozen=True)
class Archive:
    """What the application's archive offers the cluster (all of it Django-free here)."""

    read: ReadArchive
    high: ArchivedHigh
    # Edits and deletes of messages older than the log keeps are checked against it.
    message: FindMessage | None = None
    # Refilled messages get their dedupe keys back by it (None: they do not).
    dedupe_user: DedupeUser | None = None


def needs_archive(page: LogRange, after: int) -> bool:
    """The log lacks seqs just above ``after`` (trimmed or lost), or knows nothing of the
    room at all (Redis lost it and no owner has refilled it yet)."""
    return page.first_available > after + 1 or page.last_seq == 0


async def read_through(
    log: RoomLog, archive: Archive | None, slug: str, *, after: int, limit: int
) -> LogRange:
    """``log.read`` (same answer and contract), with what the log no longer holds read from the
    archive: the events of ``(after, first kept]`` come from there when it has them, so a
    reader sees ``missing`` only for seqs neither holds."""
    page = await log.read(slug, after=after, limit=limit)
    if archive is None or not needs_archive(page, after):
        return page
    # Above the log's first kept entry the log is the truth; below it, the archive.
    upto = page.first_available - 1 if page.last_seq else 2**63 - 1
    archived = await archive.read(slug, after, upto, limit)
    if not archived.events:
        if not page.last_seq and archived.high:
            # Redis forgot the room and the archive holds nothing above ``after``: the
            # archive still knows how far the room went.
            return LogRange([], archived.high + 1, archived.high, [], after)
        return page
    merged = archived.events + page.events[: max(0, limit - len(archived.events))]
    last_seq = max(page.last_seq, archived.high)
    if len(merged) >= limit:
        end = int(merged[-1]["seq"])
    elif page.last_seq:
        end = page.upto
    else:
        end = max(after, archived.high)
    kept = [archived.first] if archived.first else []
    if page.events or page.first_available <= page.last_seq:
        kept.append(page.first_available)
    first_available = min(kept) if kept else last_seq + 1
    return LogRange(merged, first_available, last_seq, holes(after, merged, end), end)
