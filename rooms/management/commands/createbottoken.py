from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from rooms import bots
from rooms.models import Room


class Command(BaseCommand):
    help = (
        "Make a bot token and print it (once: only its hash is kept). "
        "The admin does the same under Rooms > Bot tokens."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="the bot's display name (not a registered user's)")
        scope = parser.add_mutually_exclusive_group(required=True)
        scope.add_argument("--room", action="append", default=[], help="a room it may post in")
        scope.add_argument("--all-rooms", action="store_true", help="it may post in every room")

    def handle(
        self, *args: object, name: str, room: list[str], all_rooms: bool, **options: object
    ) -> None:
        rooms = list(Room.objects.filter(slug__in=room))
        missing = sorted(set(room) - {r.slug for r in rooms})
        if missing:
            raise CommandError(f"no such room: {', '.join(missing)}")
        try:
            bot, token = bots.create(name=name, rooms=rooms, all_rooms=all_rooms)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stderr.write(f"bot token {bot.key} for {bot.name!r} (posts as {bot.principal})")
        self.stdout.write(token)
