"""Errors a command can end in; each maps to one `error` frame code of the protocol."""

from __future__ import annotations

from typing import Literal

ErrorCode = Literal[
    "bad_request", "too_large", "rate_limited", "forbidden", "not_found", "unavailable"
]


class CommandError(Exception):
    """A command was refused; ``code`` is the protocol's error code."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code: ErrorCode = code
        self.detail = detail


class Fenced(Exception):
    """This node's lease on a room is gone: another node owns it now (or nobody does)."""

    def __init__(self, slug: str, owner: str, epoch: str) -> None:
        super().__init__(f"room {slug!r}: lease lost (owner now {owner or 'nobody'}@{epoch})")
        self.slug = slug
        self.owner = owner


class NotOwner(Exception):
    """A command reached a node that does not own the room."""

    def __init__(self, slug: str, owner: str | None = None, *, handoff: bool = False) -> None:
        super().__init__(f"room {slug!r} is not owned here (owner: {owner})")
        self.slug = slug
        self.owner = owner
        # True when the room is being handed to ``owner`` right now (it may claim on request).
        self.handoff = handoff
