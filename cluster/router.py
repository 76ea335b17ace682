"""Gets a command to its room's owner, wherever that is, and its answer back.

While a room changes owner (a node died, drained or handed the room on) the router retries with
the same client_id until ``send_timeout_ms``: the client sees a delay, not an error, and the
owner's dedupe makes every retry safe.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import RedisError

from .commands import Ack, Command, validate
from .config import ClusterConfig
from .errors import CommandError, NotOwner
from .membership import Membership
from .placement import preferred_node
from .registry import LeaseTaken, RoomRegistry
from .rpc import Rpc, RpcTimeout, Unreachable
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

    async def submit(self, slug: str, command: Command) -> Ack:
        validate(command, max_body=self._config.max_body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.send_timeout_ms / 1000
        delay = 0.02
        hint: str | None = None
        hint_handoff = False
        hints = 0
        while True:
            try:
                return await self._attempt(
                    slug, command, deadline - loop.time(), hint, handoff=hint_handoff
                )
            except (NotOwner, LeaseTaken, Unreachable, RpcTimeout, RedisError, OSError) as exc:
                self._registry.invalidate(slug)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    logger.warning("command for %s gave up: %s", slug, exc)
                    raise CommandError(
                        "unavailable", "the room is moving or Redis is unreachable; retry"
                    ) from exc
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
        budget: float,
        hint: str | None = None,
        *,
        handoff: bool = False,
    ) -> Ack:
        local = self._supervisor.get(slug)
        if local is not None:
            return await local.submit(command)
        successor = self._supervisor.moving.get(slug)
        if successor is not None:  # we are handing the room to it: forward
            return await self._remote(successor, slug, command, budget, handoff=True)
        if hint is not None and self._membership.is_live(hint):
            return await self._remote(hint, slug, command, budget, handoff=handoff)
        lease = await self._registry.lookup(slug)
        if lease is not None and lease.node != self.node and self._membership.is_live(lease.node):
            return await self._remote(lease.node, slug, command, budget)
        # Nobody owns the room, or its owner is dead: its preferred node takes it.
        presumed_dead = lease.node if lease is not None and lease.node != self.node else ""
        target = preferred_node(slug, self._membership.up) or self.node
        if target == self.node:
            server = await self._supervisor.activate(slug, presumed_dead=presumed_dead)
            return await server.submit(command)
        return await self._remote(target, slug, command, budget)

    async def _remote(
        self, node: str, slug: str, command: Command, budget: float, *, handoff: bool = False
    ) -> Ack:
        self.remote += 1
        timeout = max(0.05, min(ATTEMPT_TIMEOUT_S, budget))
        payload: dict[str, Any] = {"room": slug, "command": command.to_wire()}
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
            ack = await server.submit(command)
        except CommandError as exc:
            return {"error": exc.code, "detail": exc.detail}
        except (NotOwner, LeaseTaken) as exc:
            return {"error": "not_owner", "detail": str(exc)}
        return {"ack": ack.to_wire()}


def ack_from_reply(slug: str, reply: dict[str, Any]) -> Ack:
    if "ack" in reply:
        return Ack.from_wire(reply["ack"])
    code = reply.get("error")
    if code == "not_owner":
        raise NotOwner(slug, reply.get("owner"), handoff=bool(reply.get("handoff")))
    if code in ("bad_request", "too_large", "rate_limited", "forbidden", "not_found"):
        raise CommandError(code, str(reply.get("detail", "")))
    raise NotOwner(slug)  # "unavailable" on the owner: worth another try
