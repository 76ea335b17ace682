"""``prune_history``: apply ``CHAT_RETENTION_DAYS`` to the message archive (run it daily).

Only the archive is pruned: Redis keeps each room's newest events regardless (they are trimmed
by ``CHAT_HISTORY_LIMIT``), so a quiet room may still show a message older than the retention
until newer ones push it out of the log.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chatsite.settings import parse_retention_days
from rooms.archive import prune
from rooms.models import Message


class Command(BaseCommand):
    help = "Delete archived messages older than CHAT_RETENTION_DAYS (or --days)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", default=None, help="overrides CHAT_RETENTION_DAYS")
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would go, delete nothing"
        )

    def handle(self, *args: object, days: str | None, dry_run: bool, **options: object) -> None:
        try:
            retention = (
                settings.CHAT_RETENTION_DAYS
                if days is None
                else parse_retention_days(days, "--days")
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if retention is None:
            self.stdout.write("CHAT_RETENTION_DAYS is not set: history is kept forever")
            return
        if dry_run:
            before = datetime.now(tz=UTC) - timedelta(days=retention)
            count = Message.objects.filter(created__lt=before).count()
            self.stdout.write(f"would delete {count} messages older than {retention} days")
            return
        removed = prune(retention)
        self.stdout.write(f"deleted {removed} messages older than {retention} days")
