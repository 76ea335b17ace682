"""The transport probe uvicorn's protocols give each socket (chatsite/servers/uvicorn_node.py),
on real asyncio transports over loopback: it reads the transport's backlog, writes a frame only
when the socket is open, and keeps no closed socket alive."""

from __future__ import annotations

import asyncio
import gc
import socket

from chatsite.servers.uvicorn_node import AsyncioTransportProbe


class Holder(asyncio.Protocol):
    def __init__(self, made: asyncio.Future[Holder]) -> None:
        self.made = made
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.made.set_result(self)


async def connected_pair() -> tuple[Holder, socket.socket, asyncio.Server]:
    loop = asyncio.get_running_loop()
    made: asyncio.Future[Holder] = loop.create_future()
    server = await loop.create_server(lambda: Holder(made), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills fast: it never reads
    client.setblocking(False)
    await loop.sock_connect(client, ("127.0.0.1", port))
    return await asyncio.wait_for(made, 5), client, server


def read_frame(client: socket.socket) -> tuple[int, bytes]:
    client.setblocking(True)
    client.settimeout(5)
    head = client.recv(2, socket.MSG_WAITALL)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(client.recv(2, socket.MSG_WAITALL), "big")
    elif length == 127:
        length = int.from_bytes(client.recv(8, socket.MSG_WAITALL), "big")
    return head[0], client.recv(length, socket.MSG_WAITALL)


async def test_an_open_socket_gets_one_unmasked_text_frame() -> None:
    holder, client, server = await connected_pair()
    try:
        probe = AsyncioTransportProbe(holder, lambda protocol: True)
        text = "é" * 300  # 600 bytes: the 16-bit length form
        assert probe.write_text(text)
        opcode, payload = await asyncio.to_thread(read_frame, client)
        assert opcode == 0x81 and payload.decode() == text
    finally:
        client.close()
        server.close()


async def test_a_socket_not_open_gets_nothing_from_it() -> None:
    holder, client, server = await connected_pair()
    try:
        probe = AsyncioTransportProbe(holder, lambda protocol: False)
        assert not probe.write_text("held back")
        client.setblocking(False)
        await asyncio.sleep(0.05)  # what was written would be on loopback by now
        try:
            got = client.recv(100)
        except BlockingIOError:
            got = b""
        assert got == b""
    finally:
        client.close()
        server.close()


async def test_buffered_is_the_transports_backlog_and_ends_with_the_socket() -> None:
    holder, client, server = await connected_pair()
    try:
        probe = AsyncioTransportProbe(holder, lambda protocol: True)
        assert probe.buffered() == 0
        assert holder.transport is not None
        sock = holder.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel takes little
        for _ in range(200):  # 200 × 10 kB: far past what the kernel takes for a non-reader
            probe.write_text("x" * 10_000)
        backlog = probe.buffered()
        assert backlog > 100_000
        assert backlog == holder.transport.get_write_buffer_size()
        holder.transport.abort()
        assert probe.buffered() == 0, "a closing transport holds nothing the budget may count"
        assert not probe.write_text("after the close")
        del holder
        gc.collect()
        assert probe.buffered() == 0 and not probe.write_text("gone")
    finally:
        client.close()
        server.close()
