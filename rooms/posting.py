"""Posting a message from outside a socket: a view, a task, a webhook, a bot.

``apost_message`` / ``post_message`` (exported by ``rooms.services``) build the same ``Command``
as a socket's ``send`` and hand it to the node's router: the same validation
(``cluster.commands.validate``), the same rate limits (kept by the room's owner, per principal
and per address), the same dedupe by ``client_id`` per author, the same ``CommandError`` codes.

They need the cluster runtime of a node in this process (``runnode``): a command reaches the
room's owner through the node's router, its membership view and its RPC inbox. A process
without one (a Django shell, a task worker, a cron job) gets ``NoRuntime`` (code
``unavailable``) at once and posts over HTTP instead (``POST /api/rooms/SLUG/messages`` with a
bot token). We chose that over a runtime "client" that would talk to owners through Redis RPC:
such a client needs the live-node view and the placement rules of a node, so it would be half a
node, with none of a node's health checks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async

from cluster.commands import Ack, Command
from cluster.errors import CommandError
from cluster.runtime import ClusterRuntime

from . import bots
from .models import BotToken, Room

# A sync caller waits this much longer than the router's own deadline: the router always
# answers by then (guarantee 9); this bound only matters if the node's loop has stopped.
SYNC_WAIT_MARGIN_S = 2.0


class NoRuntime(CommandError):
    """No running cluster runtime in this process: post from a node, or over HTTP."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(
            "unavailable",
            detail
            or "no chat node runs in this process (runnode); post over HTTP instead: "
            "POST /api/rooms/SLUG/messages with a bot token",
        )


@dataclass(frozen=True)
class Author:
    """Who posts, as the room sees it: a display name and the principal that acts (rate
    limits, dedupe and later edits belong to the principal, never to the name)."""

    name: str
    principal: str
    dedupe_as: str = ""  # whose re-sends are one command; the principal if empty
    guest: bool = False

    @classmethod
    def of_user(cls, user: Any) -> Author:
        if not getattr(user, "is_authenticated", False) or not user.is_active:
            raise CommandError("forbidden", "log in, or use a bot token")
        return cls(user.get_username(), f"u:{user.pk}")

    @classmethod
    def of_bot(cls, bot: BotToken) -> Author:
        return cls(bot.name, bot.principal)


@dataclass(frozen=True)
class PostResult:
    """The ack: ``client_id`` is the caller's (None if it gave none); ``duplicate`` is True
    when an earlier post with the same ``client_id`` was acked again, not posted twice."""

    seq: int
    id: str
    client_id: str | None
    duplicate: bool


async def apost_message(
    slug: str,
    body: str,
    *,
    author: Author | BotToken | Any,
    client_id: str | None = None,
    address: str = "",
) -> PostResult:
    """Post ``body`` to room ``slug`` as ``author`` (an ``Author``, a ``BotToken`` or a Django
    user) and return once it is durable. Raises ``CommandError`` (``.code``, ``.detail``):
    ``bad_request``, ``too_large``, ``rate_limited``, ``forbidden`` (archived room, bot out of
    scope or revoked, anonymous user), ``not_found`` (no such room), ``unavailable`` (no node
    here, or the room could not be reached in CHAT_SEND_TIMEOUT_MS: retry with the same
    ``client_id``)."""
    runtime = _runtime()
    command, bot = await sync_to_async(_prepare)(slug, body, author, client_id, address)
    if asyncio.get_running_loop() is runtime.loop:
        ack = await runtime.submit(slug, command)
    else:  # another thread's loop: the runtime's Redis connections live on its own
        ack = await asyncio.wrap_future(_on_loop(runtime, runtime.submit(slug, command)))
    if bot is not None:
        await sync_to_async(bots.mark_used)(bot)
    return _result(ack, client_id)


def post_message(
    slug: str,
    body: str,
    *,
    author: Author | BotToken | Any,
    client_id: str | None = None,
    address: str = "",
) -> PostResult:
    """``apost_message`` for sync code running in a node (a sync view, a signal handler):
    the database work runs here, the command on the node's event loop, and this thread waits
    for the ack. Raises RuntimeError when called on that loop's own thread (it would block the
    loop: await ``apost_message`` there)."""
    runtime = _runtime()
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not None and running is runtime.loop:
        raise RuntimeError("post_message would block the node's event loop: use apost_message")
    command, bot = _prepare(slug, body, author, client_id, address)
    ack = _submit_and_wait(runtime, slug, command)
    if bot is not None:
        bots.mark_used(bot)
    return _result(ack, client_id)


def moderate_message(
    slug: str, message_id: str, *, action: str, user: Any, body: str | None = None
) -> PostResult:
    """Edit or delete message ``message_id`` of room ``slug`` as ``user``, a moderator, from
    sync code in a node (the admin): the command goes through the router to the room's owner
    like a socket's ``edit`` / ``delete``, so every client converges and the archive follows
    the log. The same ``CommandError`` codes as the socket (``not_found``, ``forbidden``,
    ``bad_request``, ``unavailable``); the moderation is logged."""
    if action not in ("edit", "delete"):
        raise CommandError("bad_request", "action must be edit or delete")
    if action == "edit" and not isinstance(body, str):
        raise CommandError("bad_request", "an edit needs a body")
    runtime = _runtime()
    who = Author.of_user(user)
    if not user.has_perm("rooms.moderate_room"):
        raise CommandError("forbidden", "moderating messages needs the moderate_room permission")
    room = Room.objects.filter(slug=slug).first() if isinstance(slug, str) else None
    if room is None:
        raise CommandError("not_found", f"no room {str(slug)[:60]!r}")
    command = Command(
        type=action,  # type: ignore[arg-type]
        user=who.name,
        client_id=f"admin-{uuid.uuid4().hex}",
        body=body or "",
        id=message_id,
        client_id_given=False,
        principal=who.principal,
        dedupe_as=who.principal,
        can_moderate=True,
    )
    ack = _submit_and_wait(runtime, slug, command)
    from .services import moderation_log  # late: services imports this module

    moderation_log(user, f"admin_{action}", slug, target=message_id)
    return _result(ack, None)


def _submit_and_wait(runtime: ClusterRuntime, slug: str, command: Command) -> Ack:
    """Submit on the node's loop and wait here, in this (non-loop) thread, for the ack."""
    future = _on_loop(runtime, runtime.submit(slug, command))
    wait_s = runtime.config.send_timeout_ms / 1000 + SYNC_WAIT_MARGIN_S
    try:
        return future.result(timeout=wait_s)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise CommandError("unavailable", "the node did not answer in time; retry") from None


def _runtime() -> ClusterRuntime:
    from .runtime import current_runtime  # late: rooms.runtime imports this app's services

    runtime = current_runtime()
    if runtime is None or runtime.loop is None or runtime.loop.is_closed():
        raise NoRuntime()
    if runtime.state not in ("running", "draining"):
        raise NoRuntime(f"this node is {runtime.state}; retry")
    return runtime


def _on_loop(
    runtime: ClusterRuntime, coroutine: Coroutine[Any, Any, Ack]
) -> concurrent.futures.Future[Ack]:
    """Run ``coroutine`` on the runtime's loop from another thread, in an empty context: the
    caller's context may hold asgiref's thread-sensitive executor, which is the very thread
    that now waits for the answer (a database call of the command's room would deadlock)."""
    assert runtime.loop is not None
    future: concurrent.futures.Future[Ack] = concurrent.futures.Future()

    async def run() -> None:
        try:
            future.set_result(await coroutine)
        except BaseException as exc:
            if not future.cancelled():
                future.set_exception(exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise

    def start() -> None:
        if future.set_running_or_notify_cancel():
            runtime.loop.create_task(run())  # type: ignore[union-attr]
        else:
            coroutine.close()

    runtime.loop.call_soon_threadsafe(start, context=contextvars.Context())
    return future


def _prepare(
    slug: str, body: Any, author: Any, client_id: Any, address: str
) -> tuple[Command, BotToken | None]:
    """The checks that need the database, then the command, exactly as a socket builds it."""
    if not isinstance(body, str):
        raise CommandError("bad_request", "body must be a string")
    if client_id is not None and (not isinstance(client_id, str) or not client_id):
        raise CommandError("bad_request", "client_id must be a non-empty string")
    room = Room.objects.filter(slug=slug).first() if isinstance(slug, str) else None
    if room is None:
        raise CommandError("not_found", f"no room {str(slug)[:60]!r}")
    if room.archived:
        raise CommandError("forbidden", "this room is archived")
    bot: BotToken | None = None
    if isinstance(author, BotToken):
        bot = BotToken.objects.filter(pk=author.pk).first()  # revoked since it was read?
        if bot is None or bot.revoked:
            raise CommandError("forbidden", "this bot token was revoked")
        try:
            bots.check_room(bot, room)
        except bots.BotRefused as refused:
            raise CommandError("forbidden", str(refused)) from None
        who = Author.of_bot(bot)
    elif isinstance(author, Author):
        who = author
    else:
        who = Author.of_user(author)
    command = Command(
        type="send",
        user=who.name,
        client_id=client_id or f"srv-{uuid.uuid4().hex}",
        body=body,
        client_id_given=client_id is not None,
        principal=who.principal,
        dedupe_as=who.dedupe_as or who.principal,
        guest=who.guest,
        address=address,
    )
    return command, bot


def _result(ack: Ack, client_id: str | None) -> PostResult:
    return PostResult(seq=ack.seq, id=ack.id, client_id=client_id, duplicate=ack.duplicate)
