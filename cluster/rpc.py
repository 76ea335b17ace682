"""Node-to-node requests over Redis pub/sub: a command goes to the room owner's inbox.

Pub/sub may drop a request (the owner died, the connection blinked); callers retry with the same
client_id, and the owner's dedupe makes the retry safe. PUBLISH answers how many nodes heard it,
so a request to a dead node fails at once instead of waiting for a timeout.

On a Redis Cluster 7+ a node's inbox is a sharded channel (SSUBSCRIBE on the master of its
``{node:NAME}`` slot), so the answer stays exact. On a Redis Cluster 6.2 the inbox is classic
pub/sub, which the cluster broadcasts; the answer then counts one node's subscribers only, so
zero proves nothing and a request to a dead node ends by its timeout instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from . import keys
from .errors import NodeUnreachable, RpcTimeout
from .hub import PubSubHub
from .publishing import publish
from .tasks import TaskGroup

logger = logging.getLogger("cluster.rpc")

Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


# The names callers catch; both are Retryable.
Unreachable = NodeUnreachable


class Rpc:
    def __init__(self, redis: Redis, hub: PubSubHub, node: str, handler: Handler) -> None:
        self._redis = redis
        self._hub = hub
        self._node = node
        self._handler = handler
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks = TaskGroup("rpc")

    async def start(self) -> None:
        await self._hub.subscribe(keys.node_rpc_channel(self._node), self._on_message, sharded=True)

    async def stop(self) -> None:
        await self._hub.unsubscribe(keys.node_rpc_channel(self._node))
        await self._tasks.stop()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(RpcTimeout("node stopping"))

    async def call(
        self, node: str, op: str, payload: dict[str, Any], *, timeout: float
    ) -> dict[str, Any]:
        request_id = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        message = {"op": op, "rid": request_id, "from": self._node, "payload": payload}
        try:
            heard = await self._publish(keys.node_rpc_channel(node), json.dumps(message))
            if heard == 0 and self._hub.counts_listeners(sharded=True):
                raise Unreachable(node)
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise RpcTimeout(f"{op} to {node} timed out after {timeout:.2f}s") from None
        finally:
            self._waiting.pop(request_id, None)

    async def _publish(self, channel: str, data: str) -> int:
        command = self._hub.publish_command(sharded=True)
        return int(await publish(self._redis, channel, data, command))

    def _on_message(self, data: str) -> None:
        try:
            message = json.loads(data)
            op, rid = message["op"], message["rid"]
        except (ValueError, KeyError, TypeError):
            logger.warning("malformed rpc message dropped: %.200s", data)
            return
        if op == "reply":
            future = self._waiting.get(rid)
            if future is not None and not future.done():
                future.set_result(message.get("payload", {}))
            return
        self._tasks.spawn(self._serve(message), f"serve:{op}")

    async def _serve(self, message: dict[str, Any]) -> None:
        try:
            result = await self._handler(message["op"], message.get("payload", {}))
        except Exception as exc:
            logger.exception("rpc %s failed", message["op"])
            result = {"error": "unavailable", "detail": str(exc)}
        reply = {"op": "reply", "rid": message["rid"], "from": self._node, "payload": result}
        try:
            await self._publish(keys.node_rpc_channel(message["from"]), json.dumps(reply))
        except Exception:
            logger.warning("could not reply to %s; it will retry", message["from"])
