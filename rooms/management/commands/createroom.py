from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from rooms.services import room_create


class Command(BaseCommand):
    help = "Create a chat room (idempotent: exits 0 if it exists)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="lower-case letters, digits and hyphens")
        parser.add_argument("--name", default="", help="display name (default: the slug)")

    def handle(self, *args: object, slug: str, name: str, **options: object) -> None:
        try:
            room, created = room_create(slug=slug, name=name)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        verb = "created" if created else "exists"
        self.stdout.write(f"room {room.slug} {verb}")
