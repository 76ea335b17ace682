"""Commands a client sends, their validation, and what the owner answers."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from .errors import CommandError
from .events import seq_of_message_id

CommandType = Literal["send", "edit", "delete"]
COMMAND_TYPES: tuple[CommandType, ...] = ("send", "edit", "delete")
MAX_CLIENT_ID = 100


@dataclass(frozen=True)
class Command:
    type: CommandType
    user: str  # the display name, as frames show it; never an authority
    client_id: str
    body: str = ""
    id: str = ""
    # False when the server made the client_id up (the client sent none): it is not echoed.
    client_id_given: bool = True
    # Who acts: ``u:<user id>``, ``g:<guest id>`` (a web guest's session), ``c:<random>`` (one
    # connection of a client that gave only ``?name=``). Edits, deletes and the rate limit
    # belong to it. Empty only in tests and tools: then ``n:<user>``.
    principal: str = ""
    # Whose re-sends are one command (guarantee 3): the principal, except for ``?name=``
    # clients, whose principal dies with their connection: ``n:<name>`` for them.
    dedupe_as: str = ""
    # The sender may edit and delete other people's messages (the moderate_room permission,
    # looked up again before each command).
    can_moderate: bool = False
    guest: bool = False  # the author is a guest: events say so (``"guest": true``)
    address: str = ""  # the client's address, for the per-address rate limit ("" = none)

    @property
    def actor(self) -> str:
        return self.principal or f"n:{self.user}"

    @property
    def dedupe_key(self) -> str:
        return self.dedupe_as or self.actor

    def to_wire(self) -> dict[str, Any]:
        # Every field is a str or bool: a flat dict, not dataclasses.asdict's deep copy (this
        # runs for every command forwarded to another node).
        return {name: getattr(self, name) for name in _COMMAND_FIELDS}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Command:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Ack:
    client_id: str
    seq: int
    id: str
    duplicate: bool = False
    # An edit or delete of someone else's message by a moderator: the node that took the
    # command logs it with who did it.
    moderated: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _ACK_FIELDS}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Ack:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


_COMMAND_FIELDS = tuple(f.name for f in fields(Command))
_ACK_FIELDS = tuple(f.name for f in fields(Ack))


def validate(command: Command, *, max_body: int) -> None:
    """Checks that need no state: the one place commands are validated. The router runs them
    where a command enters the cluster, the room server again before it appends (a command
    forwarded by another node is checked where it is applied)."""
    if command.type not in COMMAND_TYPES:
        raise CommandError("bad_request", f"unknown command type {command.type!r}")
    for name in ("client_id", "body", "id", "user", "principal", "dedupe_as", "address"):
        if not _encodable(getattr(command, name)):
            # A lone surrogate: Redis (and every client) needs UTF-8, which it has none of.
            raise CommandError("bad_request", f"{name} is not valid Unicode text")
    if not command.client_id or len(command.client_id) > MAX_CLIENT_ID:
        raise CommandError("bad_request", f"client_id must be 1 to {MAX_CLIENT_ID} characters")
    if command.type in ("send", "edit"):
        if not command.body.strip():
            raise CommandError("bad_request", "body must not be empty")
        if len(command.body) > max_body:
            raise CommandError(
                "too_large", f"body has {len(command.body)} characters; the limit is {max_body}"
            )
    if command.type in ("edit", "delete"):
        if not command.id:
            raise CommandError("bad_request", f"{command.type} needs the id of a message")
        if seq_of_message_id(command.id) is None:
            # Well-formed JSON, but no message ever had that id (ids are m<seq>).
            raise CommandError("not_found", f"no message {command.id[:40]!r} in this room")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
