from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

# Lower-case letters, digits and hyphens: safe in URLs, channel names and Redis hash tags.
SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$"
slug_validator = RegexValidator(
    SLUG_PATTERN,
    "Use 1 to 50 lower-case letters, digits and hyphens, starting and ending with a letter "
    "or digit.",
    code="invalid_slug",
)


class RoomQuerySet(models.QuerySet["Room"]):
    def active(self) -> RoomQuerySet:
        return self.filter(archived_at__isnull=True)


class Room(models.Model):
    slug = models.CharField(max_length=50, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=100)
    topic = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    archived_at = models.DateTimeField(null=True, blank=True)
    # The room's newest seq reservation, made before its seqs are used: every seq ever issued is
    # at or below it. If Redis loses the room's log, seqs go on above it instead of starting
    # again at 1 (guarantee 8; cluster/seq_recovery.py says when it can tell nothing was lost).
    seq_high_water = models.BigIntegerField(default=0)

    objects = RoomQuerySet.as_manager()

    # Who created it, as a principal (``u:<id>`` or ``g:<guest id>``): the per-creator limit
    # (CHAT_ROOMS_PER_USER) counts these, guests included when CHAT_ROOM_CREATORS is "anyone".
    created_by_principal = models.CharField(max_length=80, blank=True, db_index=True)

    class Meta:
        ordering = ["name", "slug"]
        permissions = [
            ("moderate_room", "Can moderate rooms: archive, unarchive, edit or delete any message"),
            ("purge_history", "Can purge a room's history"),
            ("move_room", "Can move a room to another node"),
        ]

    def __str__(self) -> str:
        return self.name or self.slug

    @property
    def archived(self) -> bool:
        return self.archived_at is not None


class RoomTombstone(models.Model):
    """A deleted room's seq high water: a room created again under its slug starts above it,
    so no client resuming with an old ``after=`` reads another room's events as its own."""

    slug = models.CharField(max_length=50, unique=True)
    seq_high_water = models.BigIntegerField(default=0)
    deleted_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.slug} (deleted, seqs up to {self.seq_high_water})"


class ModerationLog(models.Model):
    """Who did what to which room or message, as a moderator (admin actions and socket edits
    or deletes of other people's messages). Written once, never edited."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    actor_name = models.CharField(max_length=150)  # kept when the account is gone
    action = models.CharField(max_length=30)
    room_slug = models.CharField(max_length=50, db_index=True)
    target = models.CharField(max_length=40, blank=True)  # a message id, for edits and deletes
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        target = f" {self.target}" if self.target else ""
        return f"{self.actor_name} {self.action} {self.room_slug}{target}"


class NameKey(models.Model):
    """The confusable keys of each registered user's name (rooms.names.keys), so that a guest
    name is checked against every account in one indexed query."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    key = models.CharField(max_length=255, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="namekey_user_key")]


class BotToken(models.Model):
    """A bot's credential for ``POST /api/rooms/SLUG/messages`` (``Authorization: Bearer``).

    The token is ``chatbot_<key>_<secret>``: ``key`` finds the row (indexed, not secret), and
    only a SHA-256 of the whole token is kept; the token itself is shown once, when it is
    made. A plain hash is enough: the secret is 32 random bytes, nothing to brute-force (unlike
    a password). The bot posts as the principal ``b:<id>`` under ``name``, a display name that
    may not be confusable with a registered user's.
    """

    name = models.CharField(max_length=30, help_text="The display name its messages show.")
    key = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    all_rooms = models.BooleanField(
        default=False, help_text="May post in every room (else only in the rooms listed)."
    )
    rooms = models.ManyToManyField(Room, blank=True, related_name="bot_tokens")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Updated at most once a minute (rooms.services.BOT_SEEN_EVERY_S): not a write per message.
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.key}{', revoked' if self.revoked_at else ''})"

    @property
    def principal(self) -> str:
        return f"b:{self.pk}"

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class Message(models.Model):
    """One ``message`` event of a room's log, archived (rooms.archive): the database keeps what
    Redis trims or loses. ``body``, ``edited`` and ``deleted`` are its state now; the edit and
    delete events that changed it are its ``changes`` (a read of the archive replays them)."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    seq = models.BigIntegerField()
    message_id = models.CharField(max_length=20)  # ``m<seq>``, as the log names it
    author = models.CharField(max_length=80, blank=True)  # the principal (u:/g:/c:/n:)
    author_name = models.CharField(max_length=150)  # the display name frames showed
    guest = models.BooleanField(default=False)
    client_id = models.CharField(max_length=100, blank=True)
    body = models.TextField(blank=True)
    created = models.DateTimeField(db_index=True)  # the event's ``ts``
    edited = models.DateTimeField(null=True, blank=True)
    # The seq of the edit that set ``body``: an edit applies only over an older one, so two
    # archivers (or a re-run) that apply edits out of order still leave the newest text.
    edited_seq = models.BigIntegerField(null=True, blank=True)
    deleted = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["room", "seq"]
        constraints = [models.UniqueConstraint(fields=["room", "seq"], name="message_room_seq")]
        indexes = [models.Index(fields=["room", "-seq"], name="message_room_seq_desc")]

    def __str__(self) -> str:
        return f"{self.message_id} in room {self.room_id} by {self.author_name}"


class MessageChange(models.Model):
    """An ``edit`` or ``delete`` event of the log, archived as it was (its own seq, the body
    an edit set then), so that a read of the archive gives back exactly the log's events."""

    KINDS = [("edit", "edit"), ("delete", "delete")]

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="message_changes")
    seq = models.BigIntegerField()
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="changes")
    kind = models.CharField(max_length=10, choices=KINDS)
    author = models.CharField(max_length=80, blank=True)  # who changed it (a principal)
    author_name = models.CharField(max_length=150)
    guest = models.BooleanField(default=False)
    moderator = models.BooleanField(default=False)  # a moderator changed someone else's
    body = models.TextField(blank=True)  # an edit's new body
    created = models.DateTimeField()

    class Meta:
        ordering = ["room", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["room", "seq"], name="messagechange_room_seq")
        ]

    def __str__(self) -> str:
        return f"{self.kind} at seq {self.seq} in room {self.room_id}"


class ArchiveCursor(models.Model):
    """How far a room's log is archived: every event with seq <= ``upto`` has been applied
    (messages, edits, deletes), so an archiver resumes above it after any crash. Only ever
    raised, in the same transaction as the rows it covers."""

    room = models.OneToOneField(
        Room, on_delete=models.CASCADE, primary_key=True, related_name="archive_cursor"
    )
    upto = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.room_id} archived up to {self.upto}"


class ReadPosition(models.Model):
    """The highest seq a registered user has seen in a room (the web chat's unread counts and
    its "new messages" line). It only moves forward (``rooms.read_positions``). Guests keep
    theirs in their session instead: no row per anonymous visitor."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="read_positions")
    last_seq = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "room"], name="readposition_user_room")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} read {self.room_id} up to {self.last_seq}"
