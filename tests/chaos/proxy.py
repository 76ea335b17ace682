"""A small TCP proxy between nodes and Redis that faults can slow, reset and black-hole.

It runs its own event loop in a thread: the test's loop blocks now and then (a node starting,
a process waited for), and a proxy on that loop would stall Redis for every node meanwhile.
Every control method is thread-safe and bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

CHUNK = 65536
MAX_CONNECTIONS = 512  # a node opens a handful; far more means a reconnect storm: refuse
CONTROL_TIMEOUT_S = 5.0


class Mode(enum.Enum):
    PASS = "pass"
    SLOW = "slow"  # every chunk waits `delay_s` before it is forwarded
    BLACKHOLE = "blackhole"  # connections accepted and kept, nothing forwarded either way


@dataclass(eq=False)  # identity: pairs live in a set
class _Pair:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in (self.client, self.upstream):
            if writer is not None:
                # An abort sends RST, as a reset link would; close() would wait for a FIN.
                with contextlib.suppress(Exception):
                    writer.transport.abort()


class RedisProxy:
    """``127.0.0.1:port`` -> ``127.0.0.1:upstream_port``; ``stop()`` ends everything."""

    def __init__(self, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.port = 0
        self.mode = Mode.PASS
        self.delay_s = 0.0
        self.accepted = 0
        self.forwarded_bytes = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self._accepting: set[asyncio.Task[Any]] = set()  # accepts waiting out a black hole
        self._closing = False
        self._flowing: asyncio.Event | None = None  # set unless black-holed

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    # -- control (any thread) -----------------------------------------------------------------

    def start(self) -> RedisProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def pass_through(self) -> None:
        self._call(self._set(Mode.PASS, 0.0))

    def slow(self, delay_s: float) -> None:
        self._call(self._set(Mode.SLOW, delay_s))

    def blackhole(self) -> None:
        self._call(self._set(Mode.BLACKHOLE, 0.0))

    def reset(self) -> int:
        """Abort every open connection (both sides see a reset); returns how many."""
        return self._call(self._reset())

    def set_upstream(self, port: int) -> None:
        """Later connections go to ``port``; open ones are left alone (reset them to move)."""
        self.upstream_port = port

    @property
    def connections(self) -> int:
        return len(self._pairs)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CONTROL_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CONTROL_TIMEOUT_S)

    # -- the proxy's own loop ---------------------------------------------------------------

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, self.host, self.port or 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _set(self, mode: Mode, delay_s: float) -> None:
        assert self._flowing is not None
        self.mode, self.delay_s = mode, delay_s
        if mode is Mode.BLACKHOLE:
            self._flowing.clear()
        else:
            self._flowing.set()

    async def _reset(self) -> int:
        pairs = list(self._pairs)
        self._pairs.clear()
        for pair in pairs:
            pair.close()
        return len(pairs)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._accepting) + [t for pair in self._pairs for t in pair.tasks]
        self._closing = True
        assert self._flowing is not None
        self._flowing.set()  # accepts held by a black hole wake up, see _closing, and leave
        await self._reset()
        if tasks:  # let them finish their cancellation before the loop stops
            await asyncio.wait(tasks, timeout=CONTROL_TIMEOUT_S / 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._pairs) >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self.accepted += 1
        pair = _Pair(writer)
        self._pairs.add(pair)
        task = asyncio.current_task()
        assert task is not None
        self._accepting.add(task)
        try:
            assert self._flowing is not None
            await self._flowing.wait()  # a black hole takes the connection and says nothing
            if self._closing:
                raise OSError("proxy stopping")
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.upstream_port), CONTROL_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            self._drop(pair)
            return
        finally:
            self._accepting.discard(task)
        if pair not in self._pairs:  # reset while we connected
            up_writer.transport.abort()
            return
        pair.upstream = up_writer
        loop = asyncio.get_running_loop()
        pair.tasks = [
            loop.create_task(self._pump(reader, up_writer, pair)),
            loop.create_task(self._pump(up_reader, writer, pair)),
        ]

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, pair: _Pair
    ) -> None:
        assert self._flowing is not None
        try:
            while True:
                data = await source.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()  # black-holed: hold it, forward nothing
                if self.mode is Mode.SLOW and self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                sink.write(data)
                await sink.drain()
                self.forwarded_bytes += len(data)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._drop(pair)

    def _drop(self, pair: _Pair) -> None:
        self._pairs.discard(pair)
        pair.close()
