"""A load balancer in front of nodes, as a production install has one: the browser's page
lives on one origin, and each new connection goes to the first node that says it is ready.

The page only ever knows its own origin (chat.js reconnects to ``location.host``). When its
node drains, the node's ``/readyz`` turns 503 and its sockets close with 1012; the page
reconnects to the same origin and this balancer sends the new connection to the next ready
node, as a Kubernetes Service or any health-checked balancer would. Plain TCP, so HTTP and
WebSocket upgrades pass unchanged (the Host and Origin stay the balancer's, which the nodes'
origin check accepts as the page's own).

It runs its own event loop in a thread: Playwright's sync API blocks the test's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

PROBE_TIMEOUT_S = 1.0
CHUNK = 65536


async def _ready(port: int) -> bool:
    """``GET /readyz`` answered 200 (a fresh connection each time: no stale answer)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), PROBE_TIMEOUT_S
        )
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), PROBE_TIMEOUT_S)
        return status.split(b" ")[1:2] == [b"200"]
    except (OSError, TimeoutError, IndexError):
        return False
    finally:
        writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class Balancer:
    """``127.0.0.1:port`` -> the first ready node of ``ports``; ``stop()`` ends everything."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.port = 0
        self.routed: list[int] = []  # the node port of each connection, in order
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Balancer:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(5)
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        for port in self.ports:
            if await _ready(port):
                break
        else:  # no node is ready: the browser sees a refused connection and retries
            client_w.close()
            return
        try:
            node_r, node_w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            client_w.close()
            return
        self.routed.append(port)
        for task in (
            asyncio.create_task(_pipe(client_r, node_w)),
            asyncio.create_task(_pipe(node_r, client_w)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
