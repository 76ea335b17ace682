"""Who is on a socket, as a principal: every authority belongs to it, never to a display name.

- A logged-in user: ``u:<user id>``.
- A web guest: the guest form keeps a random guest id in the Django session (the session
  cookie reaches the socket through Channels' session middleware). Its principal in a room is
  ``g:`` plus a one-way token of that id and the room, so events can name their author without
  giving the session's id away, and a guest is not linkable from room to room.
- A client that joins with only ``?name=`` (scripts, API clients): ``c:<random>``, one per
  connection: it acts only on what it sent over that connection. Its re-sends after a
  reconnect still dedupe (guarantee 3), by ``n:<name>``: the display name is all that such a
  client keeps across connections. That costs nothing: a dedupe hit only repeats an ack.

Display names are refused when they hold invisible or control characters, or are confusable
(``rooms.names``) with a registered user's name or with the name of another guest in the room.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import secrets
import time
from dataclasses import dataclass, replace
from importlib import import_module
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.utils.crypto import constant_time_compare

from . import names, selectors, services

RECHECK_S = 1.0  # a socket looks its user up again at most this often (each command)
NAMES_TTL_S = 86_400  # the room's guest-name holders are forgotten a day after the last join


@dataclass(frozen=True)
class Identity:
    name: str  # the display name (frames' ``user``)
    principal: str  # who acts: u:<id>, g:<token>, c:<random>
    dedupe_as: str  # whose re-sends are one command
    is_guest: bool = False
    can_moderate: bool = False
    user_id: int | None = None
    session_key: str | None = None  # the session a user's socket lives on (re-checked)

    @property
    def name_holder(self) -> str:
        """Who holds the display name among the room's guests (``?name=`` clients: the name)."""
        return self.dedupe_as


class IdentityRefused(Exception):
    pass


async def identify(scope: dict[str, Any], slug: str, guest_name: str | None) -> Identity:
    """Resolve the socket's identity; raises IdentityRefused (closed with 4403)."""
    user = scope.get("user")
    if user is not None and getattr(user, "is_authenticated", False):
        if not user.is_active:
            raise IdentityRefused("this account is disabled")
        session = scope.get("session")
        return Identity(
            user.get_username(),
            principal=f"u:{user.pk}",
            dedupe_as=f"u:{user.pk}",
            can_moderate=await _can_moderate(user),
            user_id=int(user.pk),
            session_key=getattr(session, "session_key", None),
        )
    if not settings.CHAT_ALLOW_GUESTS:
        raise IdentityRefused("guests are not allowed here; log in")
    guest = _session_guest(scope)
    if guest is not None and (guest_name is None or names.normalize(guest_name) == guest[1]):
        guest_id, name = guest
        principal = guest_principal(guest_id, slug)
        identity = Identity(name, principal=principal, dedupe_as=principal, is_guest=True)
    elif guest_name is not None:
        problem = names.problem(guest_name)
        if problem:
            raise IdentityRefused(problem)
        name = names.normalize(guest_name)
        connection = f"c:{secrets.token_urlsafe(12)}"
        identity = Identity(name, principal=connection, dedupe_as=f"n:{name}", is_guest=True)
    else:
        raise IdentityRefused("give a display name with ?name=")
    if await selectors.name_registered(identity.name):
        raise IdentityRefused("that name is too close to a registered user's; choose another")
    return identity


def guest_principal(guest_id: str, slug: str) -> str:
    """A session guest's principal in one room (not linkable from room to room)."""
    return "g:" + hashlib.sha256(f"{guest_id}:{slug}".encode()).hexdigest()[:24]


def _session_guest(scope: dict[str, Any]) -> tuple[str, str] | None:
    session = scope.get("session")
    if session is None:
        return None
    try:
        guest = session.get(services.GUEST_SESSION_KEY)
    except Exception:  # an unreadable session is no session
        return None
    if not isinstance(guest, dict):
        return None
    guest_id, name = guest.get("id"), guest.get("name")
    if isinstance(guest_id, str) and guest_id and isinstance(name, str) and name:
        return guest_id, name
    return None


async def room_members(runtime: Any, slug: str) -> list[str]:
    """Who is in the room, for a guest's name check: the node's own view when it has sockets
    there (no round trip, and no reading of the whole presence hash per socket: a storm of N
    would read N²); else the cluster's from Redis, one read for every socket asking meanwhile
    (the room's first sockets on this node, all at once in a storm)."""
    present = runtime.present(slug)
    if present is not None:
        return list(present)
    return await _online.get((_Same(runtime), slug))


class _Same:
    """A key that is its object itself (a runtime is a dataclass: equal by value, unhashable)."""

    __slots__ = ("it",)

    def __init__(self, it: Any) -> None:
        self.it = it

    def __hash__(self) -> int:
        return id(self.it)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.it is self.it


async def _read_online(wanted: list[tuple[_Same, str]]) -> dict[tuple[_Same, str], list[str]]:
    by_runtime: dict[_Same, list[str]] = {}
    for runtime, slug in wanted:
        by_runtime.setdefault(runtime, []).append(slug)
    found: dict[tuple[_Same, str], list[str]] = {}
    for runtime, slugs in by_runtime.items():
        for slug, users in (await runtime.it.online(slugs)).items():
            found[(runtime, slug)] = users
    return found


_online: selectors.Batched[tuple[_Same, str], list[str]] = selectors.Batched(_read_online, [])


async def claim_guest_name(redis: Any, slug: str, identity: Identity, online: list[str]) -> None:
    """Refuse a guest name confusable with the name of someone else in the room; otherwise
    record who holds it (a hash per room: name -> holder).

    Exactly the same name is allowed to its holder (a second tab, a reconnect whose old
    presence has not left yet) and, for ``?name=`` clients, to every client of that name (they
    share nothing but the name: each acts only on its own connection's messages)."""
    from .redis_admin import names_key

    key = names_key(slug)
    mine = _keys(identity.name)
    for other in online:
        if not (_keys(other) & mine):
            continue
        if other != identity.name:
            raise IdentityRefused(f"that name is too close to {other!r}, who is in the room")
        holder = await redis.hget(key, other)
        if holder is not None and holder != identity.name_holder:
            raise IdentityRefused("someone else in the room goes by that name")
    await _claims.get((redis, key, identity.name, identity.name_holder))


async def _write_claims(claims: list[tuple[Any, str, str, str]]) -> dict[Any, None]:
    """Every claim asked for meanwhile, in one pipeline per Redis client (a connect storm of
    N guests is a few round trips, not N)."""
    by_client: dict[Any, dict[str, dict[str, str]]] = {}
    for redis, key, name, holder in claims:
        by_client.setdefault(redis, {}).setdefault(key, {})[name] = holder
    for redis, rooms in by_client.items():
        async with redis.pipeline(transaction=False) as pipe:
            for key, holders in rooms.items():
                pipe.hset(key, mapping=holders)
                pipe.expire(key, NAMES_TTL_S)
            await pipe.execute()
    return {}


_claims: selectors.Batched[tuple[Any, str, str, str], None] = selectors.Batched(_write_claims, None)


# The keys of the names in a room, computed once per name, not once per name per joining
# socket: a storm into a room of N compared every joiner with every member (N² skeletons).
_keys = functools.lru_cache(maxsize=8192)(names.keys)


@sync_to_async
def _can_moderate(user: Any) -> bool:
    return bool(user.is_active and user.has_perm("rooms.moderate_room"))


class Recheck:
    """A user's socket looks the user and the session up again before each command (at most
    once a second): logged out, deactivated or with a changed password it is closed (4403);
    demoted, it loses ``can_moderate`` at once."""

    def __init__(self, identity: Identity, clock: Any = time.monotonic) -> None:
        self.identity = identity
        self._clock = clock
        self._checked_at = clock()

    async def current(self) -> Identity | None:
        """The identity as of now, or None if the socket may not act any more."""
        if self.identity.user_id is None:
            return self.identity  # guests have no account to lose
        now = self._clock()
        if now - self._checked_at < RECHECK_S:
            return self.identity
        allowed = await _user_still_allowed(self.identity.user_id, self.identity.session_key)
        self._checked_at = now
        if allowed is None:
            return None
        if allowed != self.identity.can_moderate:
            self.identity = replace(self.identity, can_moderate=allowed)
        return self.identity


@sync_to_async
def _user_still_allowed(user_id: int, session_key: str | None) -> bool | None:
    """None if the user may not act any more; else whether they may moderate."""
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return None
    if session_key is not None:
        engine = import_module(settings.SESSION_ENGINE)
        data = engine.SessionStore(session_key).load()
        if str(data.get(SESSION_KEY, "")) != str(user_id):
            return None  # logged out (the session was flushed) or another user's now
        stored_hash = data.get(HASH_SESSION_KEY, "")
        if not constant_time_compare(str(stored_hash), user.get_session_auth_hash()):
            return None  # the password changed: Django logs every session out
    return bool(user.has_perm("rooms.moderate_room"))


def client_address(scope: dict[str, Any]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy
    (CHAT_TRUSTED_PROXIES), the nearest address in X-Forwarded-For that is not one."""
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    trusted = _trusted_networks(tuple(settings.CHAT_TRUSTED_PROXIES))
    if not trusted or not _in(peer, trusted):
        return peer
    forwarded = ""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"x-forwarded-for":
            forwarded = (
                f"{forwarded},{value.decode('latin-1')}" if forwarded else value.decode("latin-1")
            )
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):  # the right end was written by our own proxies
        if not _in(hop, trusted):
            return hop if _is_ip(hop) else peer
    return hops[0] if hops and _is_ip(hops[0]) else peer


_networks_cache: dict[tuple[str, ...], list[Any]] = {}


def _trusted_networks(entries: tuple[str, ...]) -> list[Any]:
    found = _networks_cache.get(entries)
    if found is None:
        found = [ipaddress.ip_network(entry, strict=False) for entry in entries]
        _networks_cache[entries] = found
    return found


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _in(address: str, networks: list[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
