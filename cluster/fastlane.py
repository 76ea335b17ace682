"""A lean Redis connection for the per-message hot path: the append script and publishes.

redis-py's asyncio client spends ~80 µs of CPU per command on this machine (a pooled connection
checked out and back, a retry wrapper, a timeout context around every send and every read, a
health check, event dispatch); a node sends two to four commands per chat message, so under
fan-out load that was a fifth of the node's Python time. This connection pipelines instead:
every command is written at once, replies are matched to callers in order, and one timer per
connection (not per command) bounds how long a reply may take: ~10-17 µs per command
(``benchmarks/fastlane_bench.py``).

It does what the hot path needs and no more: no retries (callers already handle a failed
command: the room server answers ``unavailable`` and the client resends with the same
client_id). One connection, opened on first use and again after a failure.

``LeanPubSub`` is the same idea for the hub's subscriptions: the part of redis-py's ``PubSub``
that the hub uses (subscribe, unsubscribe, raw commands, ``get_message``), with messages
parsed in ``data_received``. It never reconnects by itself: a lost connection raises from
``get_message``, and the hub subscribes again and has every room fill its gap from the log.

Where it runs: a plain server (``redis://``, ``unix://``) and Sentinel's current master (asked
again after every failure, so a fail-over is followed). A Redis Cluster or a TLS connection gets
no lane (``FastLane.for_client`` answers None) and stays on redis-py, which keeps the slot map
and the TLS set-up.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import hiredis
from redis import exceptions
from redis.asyncio import Redis

CONNECT_TIMEOUT_S = 2.0
# ``RUNNODE_FAST_LANE=off`` keeps every command on redis-py: to measure what the lane saves.
ENABLED = os.environ.get("RUNNODE_FAST_LANE", "on") != "off"


@dataclass(frozen=True)
class Address:
    host: str = ""
    port: int = 0
    path: str = ""  # a unix socket instead of host and port
    username: str | None = None
    password: str | None = None
    db: int = 0


def _reply_error(message: str) -> exceptions.ResponseError:
    """redis-py's exception for an error reply, so callers catch what they already catch."""
    if message.startswith("NOSCRIPT"):
        return exceptions.NoScriptError(message)
    if message.startswith("READONLY"):
        return exceptions.ReadOnlyError(message)
    return exceptions.ResponseError(message)


class _Pipe(asyncio.Protocol):
    """One connection: commands written as they come, replies handed out in order."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._reader = hiredis.Reader(encoding="utf-8", replyError=_ReplyError)
        # (future, monotonic time sent); a caller that gave up leaves its future here, and its
        # reply is still read and dropped: order is what matches replies to callers.
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.failure: Exception | None = None
        self._loop = asyncio.get_running_loop()
        self._last_read = self._loop.time()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._last_read = self._loop.time()
        self._reader.feed(data)
        waiting = self._waiting
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(exceptions.ConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not waiting:
                self._fail(exceptions.ConnectionError("a reply nobody asked for"))
                return
            future, _ = waiting.popleft()
            if future.done():
                continue
            if isinstance(reply, _ReplyError):
                future.set_exception(_reply_error(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exceptions.ConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    # -- commands -------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return self.failure is None and self._transport is not None

    def call(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        if self.failure is not None or self._transport is None:
            future.set_exception(self.failure or exceptions.ConnectionError("not connected"))
            return future
        self._transport.write(hiredis.pack_command(args))
        self._waiting.append((future, self._loop.time()))
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._timeout_s, self._check_overdue)
        return future

    def close(self) -> None:
        self._fail(exceptions.ConnectionError("closed"))

    # -- internals ----------------------------------------------------------------------------

    def _check_overdue(self) -> None:
        """One timer per connection: a reply overdue by the timeout fails the connection (a
        hung server or a half-open link), and every caller waiting on it. Overdue counts
        from the later of the oldest send and the last bytes read: a node whose own loop was
        held up (replies waiting, unread, in the socket) has not lost its server."""
        self._watchdog = None
        if not self._waiting or self.failure is not None:
            return
        age = self._loop.time() - max(self._waiting[0][1], self._last_read)
        if age >= self._timeout_s:
            self._fail(exceptions.TimeoutError(f"no reply from Redis in {self._timeout_s:.1f}s"))
            return
        self._watchdog = self._loop.call_later(self._timeout_s - age, self._check_overdue)

    def _fail(self, error: Exception) -> None:
        if self.failure is None:
            self.failure = error
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._transport is not None:
            self._transport.abort()
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)


class _ReplyError(Exception):
    """What hiredis builds for an error reply (turned into redis-py's classes by the pipe)."""


AddressSource = Callable[[], Awaitable[Address]]


def handshake(address: Address) -> list[tuple[Any, ...]]:
    """The commands a new connection sends first: AUTH (with the ACL user, if the URL named
    one) and SELECT, as redis-py's connections do."""
    commands: list[tuple[Any, ...]] = []
    if address.password is not None:
        user = (address.username,) if address.username else ()
        commands.append(("AUTH", *user, address.password))
    if address.db:
        commands.append(("SELECT", address.db))
    return commands


Opened = TypeVar("Opened", "_Pipe", "_PubSubPipe")


async def open_connection(
    address: Address,
    protocol: Callable[[], Opened],
    log_in: Callable[[Opened], Awaitable[None]],
) -> Opened:
    """Connect to ``address`` (TCP or a unix socket) and ``log_in``, within CONNECT_TIMEOUT_S;
    failures as redis-py's exceptions. A connection that fails to log in is closed."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            if address.path:
                _, opened = await loop.create_unix_connection(protocol, address.path)
            else:
                _, opened = await loop.create_connection(protocol, address.host, address.port)
            try:
                await log_in(opened)
            except BaseException:
                opened.close()
                raise
    except TimeoutError:
        raise exceptions.TimeoutError(
            f"connecting to Redis took over {CONNECT_TIMEOUT_S}s"
        ) from None
    except OSError as exc:
        raise exceptions.ConnectionError(f"cannot connect to Redis: {exc}") from exc
    return opened


class FastLane:
    """One pipelined connection to the server a redis-py client talks to."""

    def __init__(self, address: AddressSource, *, timeout_s: float = 5.0) -> None:
        self._address = address
        self._timeout_s = timeout_s
        self._pipe: _Pipe | None = None
        self._connecting: asyncio.Future[_Pipe] | None = None
        self.connects = 0

    @classmethod
    def for_client(cls, client: Any) -> FastLane | None:
        """A lane to the server ``client`` (redis-py, asyncio) uses, or None where it cannot
        follow the client: Redis Cluster, TLS, or a client of some other kind."""
        if not ENABLED or not isinstance(client, Redis):
            return None
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        if "ssl_cert_reqs" in kwargs or "ssl" in pool.connection_class.__name__.lower():
            return None
        timeout = float(kwargs.get("socket_timeout") or 5.0)
        base = Address(
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            db=int(kwargs.get("db") or 0),
        )
        get_master = getattr(pool, "get_master_address", None)
        if get_master is not None:  # Sentinel: the current master, asked on every connect

            async def master() -> Address:
                host, port = await get_master()
                return dataclasses.replace(base, host=str(host), port=int(port))

            return cls(master, timeout_s=timeout)
        if kwargs.get("path"):
            fixed = dataclasses.replace(base, path=str(kwargs["path"]))
        elif kwargs.get("host"):
            fixed = dataclasses.replace(
                base, host=str(kwargs["host"]), port=int(kwargs.get("port") or 6379)
            )
        else:
            return None

        async def same() -> Address:
            return fixed

        return cls(same, timeout_s=timeout)

    async def execute(self, *args: Any) -> Any:
        pipe = self._pipe
        if pipe is None or not pipe.usable:
            pipe = await self._connected()
        return await pipe.call(args)

    async def execute_command(self, *args: Any) -> Any:
        """As redis-py's ``execute_command`` (cluster/publishing.py publishes through it)."""
        return await self.execute(*args)

    async def publish(self, channel: str, message: str) -> int:
        """PUBLISH, answering how many subscribers heard it (as redis-py's ``publish``)."""
        return int(await self.execute("PUBLISH", channel, message))

    def register_script(self, text: str) -> LaneScript:
        return LaneScript(self, text)

    async def close(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.close()

    async def _connected(self) -> _Pipe:
        # One connect at a time: callers arriving meanwhile wait for the same one.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _Pipe:
        timeout = self._timeout_s

        async def log_in(pipe: _Pipe) -> None:
            # Pipelined; gather retrieves every answer, so a refused AUTH leaves no other
            # step's error unread when the connection is closed.
            await asyncio.gather(*[pipe.call(command) for command in handshake(address)])

        address = await self._address()
        pipe = await open_connection(address, lambda: _Pipe(timeout), log_in)
        self.connects += 1
        previous, self._pipe = self._pipe, pipe
        if previous is not None:
            previous.close()
        return pipe


class LaneScript:
    """A Lua script run by its SHA1, loaded once per server (again after NOSCRIPT: a restarted
    or failed-over server has forgotten it). Called as redis-py's ``AsyncScript`` is."""

    def __init__(self, lane: FastLane, text: str) -> None:
        self._lane = lane
        self.script = text  # as redis-py's AsyncScript names them (ReplicaWait reads both)
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._lane.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except exceptions.NoScriptError:
            await self._lane.execute("SCRIPT", "LOAD", self.script)
            return await self._lane.execute("EVALSHA", self.sha, len(keys), *keys, *args)


class _PubSubPipe(asyncio.Protocol):
    """A connection in subscribed mode: every reply is a push, queued for ``get_message``."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(encoding="utf-8", replyError=_ReplyError)
        self._transport: asyncio.Transport | None = None
        self.messages: collections.deque[dict[str, Any]] = collections.deque()
        self.failure: Exception | None = None
        self._wakeup: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(exceptions.ConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                break
            self.messages.append(_push(reply))
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exceptions.ConnectionError(f"pub/sub connection lost: {exc or 'closed'}"))

    def send(self, args: tuple[Any, ...]) -> None:
        if self.failure is not None or self._transport is None:
            raise self.failure or exceptions.ConnectionError("not connected")
        self._transport.write(hiredis.pack_command(args))

    async def wait(self, timeout: float, count: int = 1) -> None:
        """Until ``count`` pushes are queued, the connection fails, or ``timeout`` passes."""
        if len(self.messages) >= count or self.failure is not None:
            return
        loop = asyncio.get_running_loop()
        self._wakeup = waiter = loop.create_future()
        timer = loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._wakeup = None

    def close(self) -> None:
        self._fail(exceptions.ConnectionError("closed"))

    def _wake(self) -> None:
        if self._wakeup is not None:
            _resolve(self._wakeup)

    def _fail(self, error: Exception) -> None:
        if self.failure is None:
            self.failure = error
        if self._transport is not None:
            self._transport.abort()
        self._wake()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _push(reply: Any) -> dict[str, Any]:
    """A push as redis-py's ``get_message`` shows it."""
    if isinstance(reply, _ReplyError):
        return {"type": "error", "channel": None, "data": str(reply)}
    if not isinstance(reply, list) or not reply:
        return {"type": "reply", "channel": None, "data": reply}
    kind = str(reply[0])
    if kind in ("message", "smessage") and len(reply) == 3:
        return {"type": kind, "pattern": None, "channel": reply[1], "data": reply[2]}
    if kind == "pmessage" and len(reply) == 4:
        return {"type": kind, "pattern": reply[1], "channel": reply[2], "data": reply[3]}
    if kind == "pong":
        return {"type": "pong", "channel": None, "data": reply[1] if len(reply) > 1 else ""}
    return {"type": kind, "pattern": None, "channel": reply[1] if len(reply) > 1 else None,
            "data": reply[2] if len(reply) > 2 else None}  # fmt: skip


class _PoolShape:
    """What the hub reads of a redis-py pool: where the connection goes."""

    def __init__(self, address: Address) -> None:
        self.connection_kwargs = {"host": address.host, "port": address.port, "path": address.path}


class LeanPubSub:
    """The subset of redis-py's asyncio ``PubSub`` that the hub uses, without its per-message
    parsing, timeout contexts and health checks (the hub PINGs a silent connection itself)."""

    def __init__(self, lane: FastLane) -> None:
        self._lane = lane
        self._pipe: _PubSubPipe | None = None
        self.connection_pool = _PoolShape(Address())  # where it is connected, once it is

    @classmethod
    def for_client(cls, client: Any) -> LeanPubSub | None:
        """A lean PubSub to ``client``'s server, or None where the lane cannot follow it."""
        lane = FastLane.for_client(client)
        return None if lane is None else cls(lane)

    async def subscribe(self, *channels: str) -> None:
        await self.execute_command("SUBSCRIBE", *channels)

    async def unsubscribe(self, *channels: str) -> None:
        await self.execute_command("UNSUBSCRIBE", *channels)

    async def execute_command(self, *args: Any) -> None:
        """Send a command; its confirmation arrives as a message (as with redis-py)."""
        pipe = self._pipe
        if pipe is None:
            pipe = await self._connect()
        pipe.send(args)

    async def ping(self) -> None:
        await self.execute_command("PING")

    async def get_message(
        self, ignore_subscribe_messages: bool = False, timeout: float | None = 0.0
    ) -> dict[str, Any] | None:
        """The next message, or None after ``timeout`` seconds; raises once the connection
        is lost (never reconnects by itself: what was published meanwhile is gone)."""
        pipe = self._pipe
        if pipe is None:
            raise exceptions.ConnectionError("not subscribed")
        while True:
            if pipe.messages:
                message = pipe.messages.popleft()
                if message["type"] == "error":
                    # As redis-py's: a refused SSUBSCRIBE (MOVED) must not pass unnoticed.
                    raise _reply_error(str(message["data"]))
                if ignore_subscribe_messages and message["type"] in _CONFIRMATIONS:
                    continue
                return message
            if pipe.failure is not None:
                raise pipe.failure
            if not timeout:
                return None
            await pipe.wait(timeout)
            if not pipe.messages and pipe.failure is None:
                return None

    async def aclose(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.close()

    async def _connect(self) -> _PubSubPipe:
        async def log_in(pipe: _PubSubPipe) -> None:
            # AUTH and SELECT answer before the connection is in subscribed mode: their
            # replies are the first ones queued, checked here.
            commands = handshake(address)
            for command in commands:
                pipe.send(command)
            while len(pipe.messages) < len(commands) and pipe.failure is None:
                await pipe.wait(CONNECT_TIMEOUT_S, len(commands))
            if pipe.failure is not None:
                raise pipe.failure
            for _ in commands:
                answer = pipe.messages.popleft()
                if answer["type"] == "error":
                    raise _reply_error(str(answer["data"]))

        address = await self._lane._address()
        pipe = await open_connection(address, _PubSubPipe, log_in)
        self._pipe = pipe
        self.connection_pool = _PoolShape(address)
        return pipe


_CONFIRMATIONS = frozenset(
    {"subscribe", "unsubscribe", "psubscribe", "punsubscribe", "ssubscribe", "sunsubscribe"}
)
