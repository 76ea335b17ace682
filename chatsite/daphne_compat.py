"""What this project needs from daphne that daphne does not offer: ``patch_daphne()`` installs it.

1. Close codes. Autobahn's ``sendClose`` accepts only 1000 and 3000-4999, but RFC 6455 registers
   1011 (internal error), 1012 (service restart) and 1013 (try again later) for servers to send,
   and CONTRACT.md promises them. We send the close frame through autobahn's lower-level
   ``sendCloseFrame``, which is what ``sendClose`` calls after its check.
2. The transport's backlog. daphne writes every frame into Twisted's transport at once and
   Twisted buffers whatever the client does not read, without bound. A consumer that wants to
   bound a socket's memory must see that buffer: each WebSocket scope gets a ``TransportProbe``
   under ``scope["extensions"][TRANSPORT_EXTENSION]`` whose ``buffered()`` is the number of
   bytes written for the socket and not yet taken by the kernel.
3. Reading no faster than the application takes frames. daphne queues every frame a client
   sends for the application, without bound, and Channels handles one at a time: a client
   that sends faster than its commands are answered grows that queue (3,000 frames of 15 kB
   took a node up 49 MiB). Past ``INBOUND_FRAMES`` frames or ``INBOUND_BYTES`` bytes waiting,
   the socket's reading is paused (TCP pushes back on the client) until the queue is down to
   a quarter.
4. A socket closed with 1013 (it stopped reading) keeps its connection for ``SLOW_CLOSE_WAIT_S``
   after the close frame, not autobahn's default second: the close frame waits behind what the
   client has not read, and a client that reads again should get both, then resume.
5. Framing once per event. Server-to-client frames are not masked, so one event's frame bytes
   are the same for every socket: ``TransportProbe.write_text`` writes a frame framed once per
   process (``framed``) straight into the socket's transport, skipping the per-socket path
   through Channels, daphne and autobahn (three quarters of a node's CPU under fan-out load;
   see docs/benchmarks.md). ``RUNNODE_PREPARED_FRAMES=off`` turns it off, to measure it.
6. Writing through. Twisted's ``transport.write`` only buffers: it registers the socket with
   the selector, and the next loop iteration writes it and unregisters it again — two epoll
   re-registrations and a loop turn per frame, a quarter of a node's CPU under fan-out. When
   nothing is waiting in the transport, ``write_through`` sends on the socket at once, as
   asyncio's own transports do, and hands Twisted only what the kernel did not take.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import weakref
from collections import deque
from collections.abc import Iterator
from typing import Any

from chatsite.by_identity import ByIdentity

logger = logging.getLogger("chatsite.daphne_compat")
SERVER_CODES = frozenset({1011, 1012, 1013, 1014})
TRANSPORT_EXTENSION = "chat.transport"
SLOW_CLOSE_WAIT_S = 10.0  # bounded: at most the socket's buffer budget is held meanwhile
INBOUND_FRAMES = 16  # frames from one client waiting for the application before reading pauses
INBOUND_BYTES = 256 * 1024  # the same in bytes (one frame may be up to daphne's 1 MiB limit)
INBOUND_CHECK_S = 0.01  # how soon a paused socket first looks whether it may read again
INBOUND_CHECK_MAX_S = 0.25  # and how seldom at most
PREPARED_FRAMES = os.environ.get("RUNNODE_PREPARED_FRAMES", "on") != "off"
_FRAMED_KEEP = 256  # frames whose bytes are remembered: the events a room's sockets still send


def _frame_bytes(text: str) -> bytes:
    from autobahn.websocket.protocol import PreparedMessage

    # What WebSocketServerFactory.prepareMessage builds (servers do not mask).
    data: bytes = PreparedMessage(text.encode(), False, False, True).payloadHybi
    return data


# One unmasked, uncompressed WebSocket text frame carrying a text, built once per text object:
# the outbox hands every socket the same string for one event.
framed = ByIdentity(_frame_bytes, keep=_FRAMED_KEEP).get


class TransportProbe:
    """Bytes queued in the server for one WebSocket: autobahn's send queue plus Twisted's
    write buffers (every layer: TLS wraps a TCP transport)."""

    __slots__ = ("_plain_tcp", "_protocol")  # one per socket: no instance dict

    def __init__(self, protocol: Any) -> None:
        self._protocol = weakref.ref(protocol)  # the probe must not keep a closed socket alive
        # id() of the protocol's transport once it was seen to be a plain Twisted TCP one: the
        # per-event write then skips the checks that cannot change (the transport of a
        # connection stays the same object; an id, not a reference, keeps nothing alive).
        self._plain_tcp = 0

    def write_text(self, text: str, *, only_if_idle: bool = False) -> bool:
        """Write ``text`` as one frame straight into the socket's transport, now (the caller's
        order is the socket's order, as with daphne's own send, which is synchronous too).
        False, having written nothing, when the frame must go the ordinary way: the socket
        is not open (closing or closed: the ordinary send knows what to do), permessage
        compression was negotiated (every socket's bytes differ), or autobahn has writes
        queued (ours must not overtake them). With ``only_if_idle``, also False when the
        transport holds anything: then the frame fits any budget and overtakes nothing."""
        if not PREPARED_FRAMES:
            return False
        protocol = self._protocol()
        if (
            protocol is None
            or protocol.state != protocol.STATE_OPEN
            or protocol._perMessageCompress is not None
            or protocol.send_queue
        ):
            return False
        transport = protocol.transport
        if transport is None:
            return False
        if id(transport) == self._plain_tcp:
            # The fan-out's common case, once per socket per event: a look at Twisted's
            # buffer, then one send on the socket. The buffer is read inline, as _fd_buffered
            # does it without its getattr defaults (a plain TCP transport has every field):
            # that helper's call would be ~1 % of the CPU per delivery.
            if len(transport.dataBuffer) - transport.offset + transport._tempDataLen:
                if only_if_idle:
                    return False
                transport.write(framed(text))
                return True
            send_now(transport, framed(text))
            return True
        if only_if_idle and self._transport_buffered(transport):
            return False
        if _is_plain_tcp(transport):
            self._plain_tcp = id(transport)
        write_through(transport, framed(text))
        return True

    def kernel_unsent(self) -> int:
        """Bytes the kernel has not sent yet on this socket (Linux SIOCOUTQ); -1 unknown."""
        protocol = self._protocol()
        transport = getattr(protocol, "transport", None)
        for _ in range(4):  # protocol -> TLS -> TCP: the TCP one has the socket
            sock = getattr(transport, "socket", None)
            if sock is not None:
                return socket_unsent(sock)
            transport = getattr(transport, "transport", None)
        return -1

    def buffered(self) -> int:
        protocol = self._protocol()
        if protocol is None:
            return 0
        total = 0
        queue = getattr(protocol, "send_queue", None)  # autobahn's chopped or sync writes
        if queue:
            total += sum(len(item[0]) for item in queue)
        return total + self._transport_buffered(getattr(protocol, "transport", None))

    @staticmethod
    def _transport_buffered(transport: Any) -> int:
        total = 0
        for _ in range(4):  # protocol -> TLS -> TCP, and no further
            if transport is None:
                break
            total += _fd_buffered(transport)
            transport = getattr(transport, "transport", None)
        return total


def socket_unsent(sock: Any) -> int:
    """The kernel's unsent bytes for ``sock`` (SIOCOUTQ, which Linux names TIOCOUTQ); -1 where
    it cannot be read."""
    try:
        import fcntl
        import struct
        import termios

        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return int(struct.unpack("i", raw)[0])
    except (OSError, ValueError, AttributeError, ImportError):
        return -1


def write_through(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, but sent on the socket now when the transport holds nothing
    (order is kept: anything already buffered goes first through Twisted). Plain TCP only: a
    TLS transport, or anything not a Twisted TCP connection, takes the ordinary way."""
    if not _is_plain_tcp(transport) or _fd_buffered(transport):
        transport.write(data)
        return
    send_now(transport, data)


def _is_plain_tcp(transport: Any) -> bool:
    return not (
        getattr(transport, "socket", None) is None
        or getattr(transport, "TLS", True)  # Twisted's TCP transports say False until startTLS
        or not hasattr(transport, "dataBuffer")
        or getattr(transport, "transport", None) is not None  # wraps another layer
    )


def send_now(transport: Any, data: bytes) -> None:
    """Send ``data`` on a plain TCP transport whose buffer is empty; what the kernel does not
    take now goes to Twisted's buffer (which then writes it when the socket turns writable)."""
    if not transport.connected or transport.disconnecting or transport._writeDisconnected:
        transport.write(data)  # going away: Twisted's write knows what to do (drop it)
        return
    try:
        sent = transport.socket.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        # The connection is going (reset, broken pipe): Twisted's own write finds out and
        # runs its connection-lost path, which we must not duplicate here.
        transport.write(data)
        return
    if sent < len(data):
        transport.write(data[sent:])


def _fd_buffered(transport: Any) -> int:
    # twisted.internet.abstract.FileDescriptor: ``dataBuffer[offset:]`` is being written, and
    # ``_tempDataBuffer`` (``_tempDataLen`` bytes) waits to be joined onto it.
    data = getattr(transport, "dataBuffer", b"")
    pending = len(data) - int(getattr(transport, "offset", 0) or 0)
    return max(0, pending) + int(getattr(transport, "_tempDataLen", 0) or 0)


def patch_daphne() -> None:
    allow_server_close_codes()
    expose_transport()
    bound_inbound()
    plain_autobahn_highlights()
    compact_open_sockets()


# What the opening handshake left on a socket's protocol that nothing reads once it is open:
# the request and response bytes, the parsed headers (the scope has its own copy), the key.
HANDSHAKE_LEFTOVERS = (
    "http_request_data",
    "http_response_data",
    "http_status_line",
    "http_headers",
    "http_request_uri",
    "http_request_params",
    "http_request_host",
    "websocket_origin",
    "websocket_protocols",
    "websocket_extensions",
    "_wskey",
    "clean_headers",
)


class LazyDeque:
    """The part of a deque that autobahn uses for a protocol's ``send_queue`` (``append``,
    ``popleft``, ``len``) and ``TransportProbe.buffered`` reads (truth, iteration), with the
    deque made only while something waits in it: autobahn queues there only chopped or
    synchronous sends, which this project does not make."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: deque[Any] | None = None

    def append(self, item: Any) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)

    def popleft(self) -> Any:
        items = self._items
        if not items:
            raise IndexError("pop from an empty deque")
        item = items.popleft()
        if not items:
            self._items = None
        return item

    def __len__(self) -> int:
        return len(self._items) if self._items else 0

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items or ())


class _RequestPath:
    """What daphne reads of the handshake's request once the socket is open: its path (for
    the "disconnected" log line)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


def compact_open_sockets() -> None:
    """Once a socket is open, shrink what its protocol object holds (~3 kB of ~30 per idle
    socket): autobahn copies its factory's 29 settings onto every protocol, which with
    daphne's own attributes makes a 99-key instance dict (3.3 kB); they move to the class
    (one factory per server: the values are the same objects), the handshake's leftovers go,
    and the dict is rebuilt at its new size (dicts never shrink by themselves)."""
    from daphne.ws_protocol import WebSocketProtocol

    if getattr(WebSocketProtocol, "_chat_compacts", False):
        return
    original = WebSocketProtocol.onOpen

    def on_open(self: Any) -> None:
        original(self)
        try:
            compact_protocol(self)
        except Exception:  # memory only: never a reason to fail a socket
            logger.debug("compacting an open socket's protocol failed", exc_info=True)

    WebSocketProtocol.onOpen = on_open
    WebSocketProtocol._chat_compacts = True


def compact_protocol(protocol: Any) -> None:
    cls = type(protocol)
    factory = protocol.factory
    shared_by = cls.__dict__.get("_chat_config_factory")
    if shared_by is None:
        for name in cls.CONFIG_ATTRS:
            value = getattr(factory, name)
            # A plain function on the class would come back bound to the protocol: kept as
            # it is on the instance (perMessageCompressionAccept is one).
            setattr(cls, name, staticmethod(value) if inspect.isfunction(value) else value)
        cls._chat_config_factory = shared_by = factory
    attributes = protocol.__dict__
    if shared_by is factory:
        for name in cls.CONFIG_ATTRS:
            if name in attributes and attributes[name] is getattr(cls, name):
                del attributes[name]
    for name in HANDSHAKE_LEFTOVERS:
        if name in attributes:
            attributes[name] = None
    if isinstance(attributes.get("send_queue"), deque) and not attributes["send_queue"]:
        attributes["send_queue"] = LazyDeque()  # 760 bytes while empty, which is always
    request = attributes.get("request")
    if request is not None and not isinstance(request, _RequestPath):
        attributes["request"] = _RequestPath(getattr(request, "path", ""))
    protocol.__dict__ = dict(attributes)


def plain_autobahn_highlights() -> None:
    """Autobahn's protocols build the arguments of a debug line on every read and
    every connect, whether or not debug lines are shown: four ANSI-coloured strings through
    click.style and an ``inspect`` walk per read (~1 % of a node's CPU under load, more in a
    connect storm). Its module gets plain versions of the two helpers: debug lines still name
    the function and the values, uncoloured."""
    import autobahn.twisted.websocket as twisted_websocket
    import autobahn.websocket.protocol as websocket_protocol

    for module in (twisted_websocket, websocket_protocol):
        module.hltype = _plain_type  # type: ignore[attr-defined]
        module.hlval = _plain_value  # type: ignore[attr-defined]


def _plain_type(obj: Any) -> str:
    return f"<{getattr(obj, '__qualname__', type(obj).__qualname__)}>"


def _plain_value(value: Any, color: str = "", bold: bool = False) -> str:
    return f"{value}"


def allow_server_close_codes() -> None:
    from daphne.ws_protocol import WebSocketProtocol

    if getattr(WebSocketProtocol, "_chat_close_codes", False):
        return
    original = WebSocketProtocol.serverClose

    def server_close(self: Any, code: int | None = None) -> None:
        if code in SERVER_CODES:
            if code == 1013:
                self.closeHandshakeTimeout = SLOW_CLOSE_WAIT_S
            self.sendCloseFrame(code=code, isReply=False)
        else:
            original(self, code)

    WebSocketProtocol.serverClose = server_close
    WebSocketProtocol._chat_close_codes = True


def expose_transport() -> None:
    from daphne.server import Server

    if getattr(Server, "_chat_transport_probe", False):
        return
    original = Server.create_application

    def create_application(self: Any, protocol: Any, scope: dict[str, Any]) -> Any:
        if scope.get("type") != "websocket":
            return original(self, protocol, scope)
        forget_upgrade_request(protocol)
        extensions = dict(scope.get("extensions") or {})
        extensions[TRANSPORT_EXTENSION] = TransportProbe(protocol)
        scope["extensions"] = extensions
        # Daphne's own steps, with an InboundQueue instead of its asyncio.Queue.
        assert "application_instance" not in self.connections[protocol]
        queue = InboundQueue()
        scope.setdefault("asgi", {"version": "3.0"})
        instance = self.application(
            scope=scope, receive=queue.get, send=functools.partial(self.handle_reply, protocol)
        )
        if protocol not in self.connections:
            return None
        self.connections[protocol]["application_instance"] = asyncio.ensure_future(instance)
        return queue

    Server.create_application = create_application
    Server._chat_transport_probe = True


class InboundQueue:
    """A socket's frames on their way to its application: what daphne and Channels use of an
    ``asyncio.Queue`` (``put_nowait`` from daphne, ``get`` from the one consumer task), without
    its three deques and lock-free waiter lists per socket (~2.4 kB of an idle socket's ~32):
    one deque while frames wait, one future while the application waits, nothing otherwise."""

    __slots__ = ("_queue", "_waiter")

    def __init__(self) -> None:
        self._queue: deque[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        if self._queue is None:
            self._queue = deque()
        self._queue.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._queue:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._queue.popleft()
        if not self._queue:
            self._queue = None
        return item

    def qsize(self) -> int:
        return len(self._queue) if self._queue else 0

    def empty(self) -> bool:
        return not self._queue

    def waiting(self) -> tuple[Any, ...] | deque[Any]:
        """The frames waiting, oldest first (for the inbound bound)."""
        return self._queue or ()


def forget_upgrade_request(protocol: Any) -> None:
    """Let the HTTP request that was upgraded to this WebSocket go.

    The HTTP channel stays the TCP transport's producer after the upgrade, and its list of
    requests keeps the upgraded one alive for the socket's whole life: its headers, its body
    buffer and daphne's copy of both, about 2.5 kB per idle socket. Nothing reads them again
    (the WebSocket protocol has its own copy of what the scope needed, and the transport's
    protocol is the WebSocket one, so the channel sees no more data or connection loss)."""
    producer = getattr(getattr(protocol, "transport", None), "producer", None)
    channel = getattr(producer, "_channel", producer)  # _GenericHTTPChannelProtocol wraps it
    requests = getattr(channel, "requests", None)
    if isinstance(requests, list) and len(requests) == 1:
        requests.clear()


def _inbound_backlog(queue: Any) -> tuple[int, int]:
    """Frames and bytes waiting in daphne's application queue for one socket."""
    if isinstance(queue, InboundQueue):
        items: Any = queue.waiting()  # at most INBOUND_FRAMES long
    else:
        items = getattr(queue, "_queue", None) or ()  # an asyncio.Queue's deque
    size = sum(len(item.get("text") or item.get("bytes") or "") for item in items)
    return len(items), size


def bound_inbound() -> None:
    from daphne.ws_protocol import WebSocketProtocol

    if getattr(WebSocketProtocol, "_chat_bounded_inbound", False):
        return
    original = WebSocketProtocol.onMessage

    def check_later(protocol: Any, delay: float) -> None:
        # Imported here, when daphne runs: importing the reactor earlier could install
        # Twisted's default one before daphne installs its asyncio reactor.
        from twisted.internet import reactor

        reactor.callLater(delay, maybe_resume, protocol, delay)

    def maybe_resume(protocol: Any, delay: float) -> None:
        transport = protocol.transport
        if transport is None or getattr(transport, "disconnected", False):
            return
        frames, size = _inbound_backlog(protocol.application_queue)
        if frames <= INBOUND_FRAMES // 4 and size <= INBOUND_BYTES // 4:
            protocol._chat_reading_paused = False
            transport.resumeProducing()
        else:  # a consumer busy for long (a command waiting for its room) is looked at less
            check_later(protocol, min(INBOUND_CHECK_MAX_S, delay * 2))

    def on_message(self: Any, payload: bytes, isBinary: bool) -> None:
        original(self, payload, isBinary)
        if getattr(self, "_chat_reading_paused", False) or self.transport is None:
            return
        frames, size = _inbound_backlog(getattr(self, "application_queue", None))
        if frames > INBOUND_FRAMES or size > INBOUND_BYTES:
            self._chat_reading_paused = True
            self.transport.pauseProducing()
            check_later(self, INBOUND_CHECK_S)

    WebSocketProtocol.onMessage = on_message
    WebSocketProtocol._chat_bounded_inbound = True
