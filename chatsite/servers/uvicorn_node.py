"""The node under uvicorn (``websockets`` or ``wsproto`` protocol), in one asyncio loop with the
runtime: the runtime starts first, then uvicorn binds; on SIGTERM the node drains while uvicorn
still serves (readyz says 503), and uvicorn stops last.

What daphne gets from ``daphne_compat``, uvicorn's protocols get here, by subclassing:

- ``scope["extensions"]["chat.transport"]``: an ``AsyncioTransportProbe``. Its ``buffered()``
  is the asyncio transport's write buffer, which bounds a socket's memory (guarantee 10), and
  its ``write_text`` writes a frame framed once per event straight into the transport.
- The websockets protocol's own write limit is raised to the socket's budget: otherwise its
  ``send`` waits for the client at 64 KiB, the consumer hangs in it, and a client that stopped
  reading would never see 1013 (only a ping timeout's 1011, tens of seconds later).
- Inbound: wsproto reads no further than one frame the application has not taken; the
  websockets protocol holds at most ``WS_MAX_QUEUE`` frames of at most ``WS_MAX_SIZE``.
- Close codes 1011-1014 pass both libraries' checks as they are.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, TextIO

from django.conf import settings

from chatsite.daphne_compat import PREPARED_FRAMES, TRANSPORT_EXTENSION, framed, socket_unsent
from cluster.runtime import ClusterRuntime

from .lifecycle import NodeLifecycle

WS_MAX_SIZE = 1 << 20  # daphne's (autobahn's) frame limit too; the protocol's are far smaller
WS_MAX_QUEUE = 4  # frames read ahead of the application: at most 4 MiB for one socket
GRACEFUL_S = 5.0  # after the drain, what uvicorn gives connections left before cutting them


class AsyncioTransportProbe:
    """Bytes an asyncio transport holds for one WebSocket, and a direct frame write."""

    def __init__(self, protocol: Any, is_open: Any) -> None:
        self._protocol = weakref.ref(protocol)  # the probe must not keep a closed socket alive
        self._is_open = is_open  # protocol -> bool: open, uncompressed, handshake written

    def buffered(self) -> int:
        protocol = self._protocol()
        transport = getattr(protocol, "transport", None)
        if transport is None or transport.is_closing():
            return 0
        return int(transport.get_write_buffer_size())

    def kernel_unsent(self) -> int:
        protocol = self._protocol()
        transport = getattr(protocol, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        return socket_unsent(sock) if sock is not None else -1

    def write_text(self, text: str, *, only_if_idle: bool = False) -> bool:
        """As ``daphne_compat.TransportProbe.write_text``: False, having written nothing,
        when the frame must go the ordinary way (with ``only_if_idle``, also when the
        transport holds anything). asyncio's ``write`` sends at once when nothing waits."""
        if not PREPARED_FRAMES:
            return False
        protocol = self._protocol()
        if protocol is None or not self._is_open(protocol):
            return False
        transport = protocol.transport
        if transport is None or transport.is_closing():
            return False
        if only_if_idle and transport.get_write_buffer_size():
            return False
        transport.write(framed(text))
        return True


def _websockets_open(protocol: Any) -> bool:
    from websockets.protocol import State

    return (
        protocol.state is State.OPEN
        and protocol.handshake_completed_event.is_set()
        and not protocol.closed_event.is_set()
        and not protocol.extensions  # permessage-deflate: every socket's bytes differ
    )


def _wsproto_open(protocol: Any) -> bool:
    from wsproto.connection import ConnectionState

    return (
        protocol.handshake_complete
        and not protocol.close_sent
        and not protocol.response_started
        and protocol.conn.state is ConnectionState.OPEN
        and not getattr(getattr(protocol.conn, "_proto", None), "extensions", None)
    )


def protocol_classes() -> dict[str, type]:
    """uvicorn's two WebSocket protocols, each giving its scopes a probe."""
    from uvicorn.protocols.utils import ClientDisconnected
    from uvicorn.protocols.websockets.websockets_impl import WebSocketProtocol
    from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

    class ChatWebSocketProtocol(WebSocketProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Read by connection_made (transport.set_write_buffer_limits): send() waits only
            # past the budget, which the consumer's SendBudget keeps it under.
            self.write_limit = settings.CHAT_SOCKET_BUFFER_BYTES

        async def run_asgi(self) -> None:
            extensions = dict(self.scope.get("extensions") or {})
            extensions[TRANSPORT_EXTENSION] = AsyncioTransportProbe(self, _websockets_open)
            self.scope["extensions"] = extensions
            await super().run_asgi()

        async def asgi_send(self, message: Any) -> None:
            # Once the client is gone this protocol raises RuntimeError ("unexpected ASGI
            # message") where wsproto's raises ClientDisconnected; the consumer may still be
            # writing before it has taken the disconnect, and must see the same as elsewhere.
            if (
                self.closed_event.is_set()
                and self.initial_response is None
                and message.get("type") in ("websocket.send", "websocket.close")
            ):
                raise ClientDisconnected()
            await super().asgi_send(message)

    class ChatWSProtocol(WSProtocol):
        async def run_asgi(self) -> None:
            extensions = dict(self.scope.get("extensions") or {})
            extensions[TRANSPORT_EXTENSION] = AsyncioTransportProbe(self, _wsproto_open)
            self.scope["extensions"] = extensions
            await super().run_asgi()

    return {"uvicorn": ChatWebSocketProtocol, "uvicorn-wsproto": ChatWSProtocol}


def serve(
    app: Any, runtime: ClusterRuntime, *, name: str, host: str, port: int, stdout: TextIO
) -> int:
    import uvicorn

    class Server(uvicorn.Server):
        # uvicorn's own handlers would stop it at once and re-raise the signal when it
        # returns (exit -15): the node drains first, then ends uvicorn itself.
        def capture_signals(self) -> Any:
            import contextlib

            return contextlib.nullcontext()

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ws=protocol_classes()[name],
        ws_max_size=WS_MAX_SIZE,
        ws_max_queue=WS_MAX_QUEUE,
        # Compression would cost every socket a zlib state and defeat the frame written
        # once per event; daphne does not offer it either.
        ws_per_message_deflate=False,
        lifespan="off",  # the runtime's lifecycle is the node's, as under daphne
        access_log=False,
        log_config=None,  # Django's LOGGING stays in charge
        timeout_graceful_shutdown=GRACEFUL_S,
    )
    server = Server(config)

    def stop_server() -> None:
        server.should_exit = True

    node = NodeLifecycle(
        runtime, server=name, address=f"{host}:{port}", stdout=stdout, stop_server=stop_server
    )

    async def main() -> None:
        if not await node.start():
            return
        try:
            await server.serve()
        except SystemExit:  # uvicorn exits when it cannot bind: leave the cluster first
            node.exit_code = 1
        if not node.stopping:
            if not server.started:
                node.exit_code = 1
            await node.shutdown()
        await node.wait()

    asyncio.run(main())
    return node.exit_code
