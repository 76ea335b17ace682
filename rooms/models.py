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

    class Meta:
        ordering = ["name", "slug"]

    def __str__(self) -> str:
        return self.name or self.slug

    @property
    def archived(self) -> bool:
        return self.archived_at is not None
