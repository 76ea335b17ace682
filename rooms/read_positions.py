"""How far each reader has read each room: the web chat's unread counts and "new messages" line.

A position is the highest seq the reader has seen (any durable event, not only messages). It
only ever moves forward: a page left open in an old tab that reports a lower seq changes
nothing. Registered users keep theirs in the database (``ReadPosition``), so every browser of
theirs agrees; a guest (a session that joined through the guest form) keeps them in its
session, a small dict ``{slug: seq}`` of at most ``GUEST_ROOMS_KEPT`` rooms. Anyone else (a
reader who never joined) has no position and sees no counts.

Unread counts are read from the room's log in Redis: the messages above the position, not
written by the reader, and not deleted since. A room never opened has no position: it shows
no count rather than "everything is new".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone

from cluster import events
from cluster.keys import RoomKeys

from . import redis_admin, services
from .identity import guest_principal
from .models import ReadPosition, Room

GUEST_READ_KEY = "chat_read"
GUEST_ROOMS_KEPT = 200  # a guest's session holds positions for this many rooms at most
UNREAD_SCAN = 100  # log entries read per room for its count; a full scan shows "N+"


@dataclass(frozen=True)
class Unread:
    count: int
    more: bool  # there may be more than ``count`` (the scan stopped)

    def __str__(self) -> str:
        return f"{self.count}+" if self.more else str(self.count)


def _guest(request: HttpRequest) -> dict[str, Any] | None:
    guest = request.session.get(services.GUEST_SESSION_KEY)
    if request.user.is_authenticated or not isinstance(guest, dict):
        return None
    return guest if isinstance(guest.get("id"), str) and guest["id"] else None


def has_reader(request: HttpRequest) -> bool:
    """Whether positions are kept for this request: a user, or a session guest."""
    return bool(request.user.is_authenticated or _guest(request))


def principal(request: HttpRequest, slug: str) -> str | None:
    """Who the reader is as an author in ``slug`` (their own messages are never unread)."""
    if request.user.is_authenticated:
        return f"u:{request.user.pk}"
    guest = _guest(request)
    return guest_principal(guest["id"], slug) if guest else None


def positions(request: HttpRequest, slugs: list[str]) -> dict[str, int]:
    """The reader's positions in those rooms; a room never read is absent."""
    if request.user.is_authenticated:
        rows = ReadPosition.objects.filter(user=request.user, room__slug__in=slugs)
        return dict(rows.values_list("room__slug", "last_seq"))
    if _guest(request) is None:
        return {}
    kept = request.session.get(GUEST_READ_KEY)
    if not isinstance(kept, dict):
        return {}
    return {s: kept[s] for s in slugs if isinstance(kept.get(s), int)}


def position(request: HttpRequest, slug: str) -> int | None:
    return positions(request, [slug]).get(slug)


def record(request: HttpRequest, room: Room, seq: int) -> int:
    """Move the reader's position in ``room`` up to ``seq`` (never down); return it.
    The caller has checked that the request has a reader and that ``seq`` was issued."""
    if request.user.is_authenticated:
        return _record_user(request.user, room, seq)
    kept = request.session.get(GUEST_READ_KEY)
    kept = dict(kept) if isinstance(kept, dict) else {}
    current = kept.pop(room.slug, 0)
    current = max(current if isinstance(current, int) else 0, seq)
    kept[room.slug] = current  # last in order: the most recently read room
    while len(kept) > GUEST_ROOMS_KEPT:
        kept.pop(next(iter(kept)))
    request.session[GUEST_READ_KEY] = kept
    return current


def _record_user(user: Any, room: Room, seq: int) -> int:
    # A conditional UPDATE, so two tabs reporting at once can only raise it; the first report
    # creates the row (a concurrent first report loses the race on the unique constraint and
    # goes round once more as an update).
    for _ in range(2):
        lower = ReadPosition.objects.filter(user=user, room=room, last_seq__lt=seq)
        if lower.update(last_seq=seq, updated_at=timezone.now()):
            return seq
        try:
            with transaction.atomic():
                found, _ = ReadPosition.objects.get_or_create(
                    user=user, room=room, defaults={"last_seq": seq}
                )
        except IntegrityError:
            continue
        if found.last_seq >= seq:  # made now at seq, or already there
            return int(found.last_seq)
    return int(ReadPosition.objects.get(user=user, room=room).last_seq)


def last_issued(slug: str) -> int:
    """The room's highest seq issued (not merely reserved): the counter or the log's end."""
    k = RoomKeys(slug)
    pipe = redis_admin.client().pipeline(transaction=False)
    pipe.get(k.seq)
    pipe.xrevrange(k.log, count=1)
    seq, last = pipe.execute()
    return max(int(seq or 0), events.seq_of_stream_id(last[0][0]) if last else 0)


def unread_counts(request: HttpRequest, at: dict[str, int]) -> dict[str, Unread]:
    """Unread messages in each room of ``at`` (slug -> position), in one Redis round trip.
    Raises what the Redis client raises (the caller shows the list without counts)."""
    if not at:
        return {}
    pipe = redis_admin.client().pipeline(transaction=False)
    slugs = list(at)
    for slug in slugs:
        pipe.xrange(RoomKeys(slug).log, min=f"{at[slug] + 1}-0", max="+", count=UNREAD_SCAN)
    counts: dict[str, Unread] = {}
    for slug, entries in zip(slugs, pipe.execute(), strict=True):
        me = principal(request, slug)
        unread: set[str] = set()
        for stream_id, fields in entries:
            event = _decode(stream_id, fields)
            if event.get("type") == "message" and event.get("author") != me:
                unread.add(str(event.get("id") or ""))
            elif event.get("type") == "delete":
                unread.discard(str(event.get("id") or ""))
        counts[slug] = Unread(len(unread), more=len(entries) >= UNREAD_SCAN)
    return counts


def _decode(stream_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    try:
        event = events.decode(events.seq_of_stream_id(stream_id), fields["e"])
    except (KeyError, ValueError, TypeError):  # not an event: nobody's unread message
        return {}
    return event if isinstance(event, dict) else {}
