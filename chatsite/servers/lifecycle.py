"""What every server's ``runnode`` shares: start the runtime in the server's loop, and on
SIGTERM or SIGINT drain (readyz 503, rooms handed off, sockets closed with 1012), stop the
runtime, then let the server stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Callable
from typing import TextIO

from django.conf import settings

from chatsite.redact import redact_url
from cluster.runtime import ClusterRuntime

logger = logging.getLogger("chatsite.runnode")
# Gen-0 collections every 700 allocations cost a node under fan-out load p99 and CPU, scanning
# objects that live as long as the process (modules, settings, the runtime). Those are frozen
# once the node is up, and gen 0 waits for 50,000 allocations. RUNNODE_GC=default keeps
# Python's defaults (to measure the difference: docs/benchmarks.md).
GC_THRESHOLD = (50_000, 50, 100)


def tune_gc() -> None:
    if os.environ.get("RUNNODE_GC", "tuned") == "default":
        return
    gc.collect()  # what is garbage now should not be frozen with the rest
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


class NodeLifecycle:
    """``start`` once the server's loop runs; ``shutdown`` on a signal, once; ``stop_server``
    is the server's own way to end its loop, called last."""

    def __init__(
        self,
        runtime: ClusterRuntime,
        *,
        server: str,
        address: str,
        stdout: TextIO,
        stop_server: Callable[[], None],
    ) -> None:
        self.runtime = runtime
        self.server = server
        self.address = address
        self.stdout = stdout
        self.stop_server = stop_server
        self.exit_code = 0
        self.stopping = False
        self._shutdown: asyncio.Task[None] | None = None  # owned here: awaited by ``wait``

    async def start(self) -> bool:
        try:
            await self.runtime.start()
        except Exception:
            logger.exception("could not start the cluster runtime")
            self.exit_code = 1
            self.stop_server()
            return False
        tune_gc()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.begin_shutdown)
        loop.add_signal_handler(signal.SIGINT, self.begin_shutdown)
        redis_url = redact_url(settings.CHAT_REDIS_URL)
        self.stdout.write(
            f"node {self.runtime.node} serving on http://{self.address}/ "
            f"({redis_url}, server {self.server})\n"
        )
        self.stdout.flush()
        return True

    def begin_shutdown(self) -> None:
        if self._shutdown is None:
            self._shutdown = asyncio.get_running_loop().create_task(self.shutdown())

    async def wait(self) -> None:
        """Until a shutdown begun by a signal has finished."""
        if self._shutdown is not None:
            await self._shutdown

    async def shutdown(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        logger.info("SIGTERM: draining node %s", self.runtime.node)
        try:
            await self.runtime.drain()
        finally:
            try:
                await self.runtime.stop()
            except Exception:
                logger.exception("stopping the runtime failed; exiting anyway")
            finally:
                from rooms.runtime import install

                install(None)
                self.stop_server()
