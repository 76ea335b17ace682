"""Gets a command to its room's owner, wherever that is, and its answer back.

While a room changes owner (a node died, drained or handed the room on) the router retries with
the same client_id until ``send_timeout_ms``: the client sees a delay, not an error, and the
owner's dedupe makes every retry safe.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .commands import Ack, Command, validate
from .config import ClusterConfig
from .errors import (
    ERROR_CODES,
    CommandError,
    LeaseTaken,
    NotOwner,
    RoomUnavailable,
    is_retryable,
)
from .membership import Membership
from .placement import preferred_node
from .registry import RoomRegistry
from .rpc import Rpc
from .supervisor import Supervisor

logger = logging.getLogger("cluster.router")

ATTEMPT_TIMEOUT_S = 1.5  # one try at a remote owner; longer than any healthy append


class CommandRouter:
    def __init__(
        self,
        *,
        config: ClusterConfig,
        registry: RoomRegistry,
        membership: Membership,
        supervisor: Supervisor,
        rpc: Rpc,
    ) -> None:
        self.node = config.node_name
        self._config = config
        self._registry = registry
        self._membership = membership
        self._supervisor = supervisor
        self._rpc = rpc
        self.retries = 0
        self.remote = 0

    async def submit(self, slug: str, command: Command, *, received_at: float | None = None) -> Ack:
        """The command's ack, or CommandError, by ``send_timeout_ms`` after ``received_at``
        (loop time; default now): a command that waited behind others on its socket has
        spent part of its time already, and its client waits no longer for that."""
        validate(command, max_body=self._config.max_body)
        loop = asyncio.get_running_loop()
        start = loop.time() if received_at is None else min(received_at, loop.time())
        deadline = start + self._config.send_timeout_ms / 1000
        if deadline <= loop.time():
            raise _gave_up()
        delay = 0.02
        hint: str | None = None
        hint_handoff = False
        hints = 0
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    return await self._attempt(slug, command, deadline, hint, handoff=hint_handoff)
            except TimeoutError as exc:
                # Our own deadline: the attempt in flight may still be applied later, which
                # a re-send with the same client_id learns from the dedupe.
                self._registry.invalidate(slug)
                logger.warning("command for %s: no answer in time", slug)
                raise _gave_up() from exc
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                self._registry.invalidate(slug)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    logger.warning("command for %s gave up: %s", slug, exc)
                    raise _gave_up() from exc
                self.retries += 1
                if isinstance(exc, NotOwner) and exc.owner and hints < 3:
                    # The node we asked named the owner (or the successor of a hand-off in
                    # progress): go there now instead of sleeping.
                    hint = exc.owner if exc.owner != self.node else None
                    hints += 1
                    hint_handoff = exc.handoff
                    continue
                hint, hint_handoff = None, False
                await asyncio.sleep(min(delay, remaining))
                delay = min(0.25, delay * 2)

    async def _attempt(
        self,
        slug: str,
        command: Command,
        deadline: float,
        hint: str | None = None,
        *,
        handoff: bool = False,
    ) -> Ack:
        local = self._supervisor.get(slug)
        if local is not None:
            return await local.submit(command, deadline=deadline)
        successor = self._supervisor.moving.get(slug)
        if successor is not None:  # we are handing the room to it: forward
            return await self._remote(successor, slug, command, deadline, handoff=True)
        if hint is not None and self._membership.is_live(hint):
            return await self._remote(hint, slug, command, deadline, handoff=handoff)
        lease = await self._registry.lookup(slug)
        if lease is not None and lease.node != self.node and self._membership.is_live(lease.node):
            return await self._remote(lease.node, slug, command, deadline)
        # Nobody owns the room, or its owner is dead: its preferred node takes it.
        presumed_dead = lease.node if lease is not None and lease.node != self.node else ""
        target = preferred_node(slug, self._membership.up) or self.node
        if target == self.node:
            server = await self._supervisor.activate(slug, presumed_dead=presumed_dead)
            return await server.submit(command, deadline=deadline)
        return await self._remote(target, slug, command, deadline)

    async def _remote(
        self, node: str, slug: str, command: Command, deadline: float, *, handoff: bool = False
    ) -> Ack:
        self.remote += 1
        budget = deadline - asyncio.get_running_loop().time()
        timeout = max(0.05, min(ATTEMPT_TIMEOUT_S, budget))
        # The owner drops the command if it is still queued when this attempt gives up: a
        # retry is on its way by then, and the stale copy would only spend rate-limit tokens.
        payload: dict[str, Any] = {
            "room": slug,
            "command": command.to_wire(),
            "budget_ms": int(timeout * 1000),
        }
        if handoff:
            payload["handoff"] = True
        reply = await self._rpc.call(node, "command", payload, timeout=timeout)
        return ack_from_reply(slug, reply)

    async def serve(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The owner's side of ``_remote``: run a command that another node forwarded."""
        if op != "command":
            return {"error": "bad_request", "detail": f"unknown op {op!r}"}
        slug = str(payload["room"])
        command = Command.from_wire(payload["command"])
        budget_ms = payload.get("budget_ms")
        loop = asyncio.get_running_loop()
        budget_s = budget_ms / 1000 if isinstance(budget_ms, int) else ATTEMPT_TIMEOUT_S
        deadline = loop.time() + max(0.0, min(budget_s, self._config.send_timeout_ms / 1000))
        try:
            server = self._supervisor.get(slug)
            if server is None:
                successor = self._supervisor.moving.get(slug)
                if successor is not None:
                    return {"error": "not_owner", "owner": successor, "handoff": True}
                lease = await self._registry.lookup(slug, fresh=True)
                if lease is not None and lease.node != self.node:
                    if self._membership.is_live(lease.node):
                        return {"error": "not_owner", "owner": lease.node}
                    server = await self._supervisor.activate(slug, presumed_dead=lease.node)
                elif lease is None and not payload.get("handoff"):
                    # Nobody owns it: only its preferred node takes it (a command that raced
                    # a hand-off must not pull the room back to the node that just gave it up).
                    target = preferred_node(slug, self._membership.up)
                    if target is not None and target != self.node:
                        return {"error": "not_owner", "owner": target}
                    server = await self._supervisor.activate(slug)
                else:
                    server = await self._supervisor.activate(slug)
            ack = await server.submit(command, deadline=deadline)
        except CommandError as exc:
            return {"error": exc.code, "detail": exc.detail}
        except NotOwner as exc:
            return {"error": "not_owner", "owner": exc.owner, "detail": str(exc)}
        except LeaseTaken as exc:
            return {"error": "not_owner", "owner": exc.owner, "detail": str(exc)}
        except Exception as exc:
            if not is_retryable(exc):
                raise
            return {"error": "retry", "detail": str(exc)}
        return {"ack": ack.to_wire()}


def ack_from_reply(slug: str, reply: dict[str, Any]) -> Ack:
    if "ack" in reply:
        return Ack.from_wire(reply["ack"])
    code = reply.get("error")
    if code == "not_owner":
        owner = reply.get("owner")
        raise NotOwner(
            slug, owner if isinstance(owner, str) else None, handoff=bool(reply.get("handoff"))
        )
    if code in ERROR_CODES:
        # The owner refused (or failed) the command itself: the same answer for the client.
        raise CommandError(code, str(reply.get("detail", "")))
    # "retry" (the owner's room server stopped or Redis blinked there): worth another try.
    raise RoomUnavailable(slug, str(reply.get("detail", "the owner asked for a retry")))


def _gave_up() -> CommandError:
    return CommandError("unavailable", "the room is moving or Redis is unreachable; retry")
