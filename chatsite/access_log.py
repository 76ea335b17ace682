"""The access log: one line per HTTP request, one per WebSocket open and one per close.

An ASGI wrapper around the whole application, so that it sees what the client saw: the status
the response started with, the close code the socket ended with (the one the node sent, else
the client's), how long each took. It gives every connection a short random id (``conn``) and
binds it to the log context (``chatsite/logs.py``): every line logged while serving that
request or socket carries it.

Only the path is logged, never the query string: a socket's ``?name=`` and ``after=`` are the
client's business, and a query can carry what should not sit in logs. ``/healthz`` and
``/readyz`` are logged at DEBUG: a probe every few seconds is noise, not traffic.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from chatsite import logs

logger = logging.getLogger("chatsite.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

QUIET_PATHS = frozenset({"/healthz", "/readyz"})
CLOSE_ABNORMAL = 1006  # the socket ended with no close code from either side


def new_conn_id() -> str:
    return secrets.token_hex(6)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        conn = new_conn_id()
        scope["chat_conn_id"] = conn
        logs.bind(conn=conn)
        if kind == "http":
            await self._http(scope, receive, send)
        else:
            await self._websocket(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        seen: dict[str, int] = {"status": 0, "bytes": 0}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = int(message.get("status", 0))
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope.get("path", "")
            level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
            status = seen["status"] or 500  # the app failed before it answered
            duration_ms = round((time.monotonic() - started) * 1000, 2)
            logger.log(
                level,
                '%s %s %d %d B %.1f ms',
                scope.get("method", ""), path, status, seen["bytes"], duration_ms,
                extra={
                    "event": "http_request", "method": scope.get("method", ""), "path": path,
                    "status": status, "bytes": seen["bytes"], "duration_ms": duration_ms,
                    "client": _client(scope),
                },
            )  # fmt: skip

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = _SocketWatch(scope, receive, send)
        try:
            await self.app(scope, watch.receiving, watch.sending)
        finally:
            watch.log_close()


class _SocketWatch:
    """What the access log notes of one socket while it lives: one small object per socket
    (not a dict and two closures: a node holds thousands of idle sockets)."""

    __slots__ = ("accepted", "heard", "path", "receive", "scope", "send", "sent", "started")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.path = scope.get("path", "")
        self.started = time.monotonic()
        self.receive = receive
        self.send = send
        self.accepted = False
        self.sent: int | None = None  # the close code the node sent
        self.heard: int | None = None  # the one the client's disconnect carried

    async def sending(self, message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            self.accepted = True
            logger.info(
                "websocket open %s", self.path,
                extra={"event": "websocket_open", "path": self.path, "client": _client(self.scope)},
            )  # fmt: skip
        elif kind == "websocket.close" and self.sent is None:
            self.sent = int(message.get("code", 1000))
        await self.send(message)

    async def receiving(self) -> Message:
        message = await self.receive()
        if message["type"] == "websocket.disconnect" and self.heard is None:
            self.heard = int(message.get("code", CLOSE_ABNORMAL))
        return message

    def log_close(self) -> None:
        if self.sent is not None:
            code, by = self.sent, "server"
        elif self.heard is not None:
            code, by = self.heard, "client"
        else:
            code, by = CLOSE_ABNORMAL, "server"
        duration_s = round(time.monotonic() - self.started, 3)
        what = "websocket closed" if self.accepted else "websocket refused"
        logger.info(
            "%s %s code %d by %s after %.1f s", what, self.path, code, by, duration_s,
            extra={
                "event": "websocket_close" if self.accepted else "websocket_refused",
                "path": self.path, "code": code, "closed_by": by, "duration_s": duration_s,
                "client": _client(self.scope),
            },
        )  # fmt: skip
