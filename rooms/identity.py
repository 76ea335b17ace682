"""Who is on a socket: a logged-in user, or a guest with a display name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings

from . import selectors, services


@dataclass(frozen=True)
class Identity:
    name: str
    is_staff: bool = False
    is_guest: bool = False


class IdentityRefused(Exception):
    pass


async def identify(user: Any, guest_name: str | None) -> Identity:
    """Resolve the socket's identity; raises IdentityRefused (closed with 4403)."""
    if user is not None and getattr(user, "is_authenticated", False):
        return Identity(user.get_username(), is_staff=bool(user.is_staff))
    if not settings.CHAT_ALLOW_GUESTS:
        raise IdentityRefused("guests are not allowed here; log in")
    if guest_name is None:
        raise IdentityRefused("give a display name with ?name=")
    problem = services.guest_name_error(guest_name)
    if problem:
        raise IdentityRefused(problem)
    name = guest_name.strip()
    if await selectors.username_taken(name):
        raise IdentityRefused("that name belongs to a registered user")
    return Identity(name, is_guest=True)
