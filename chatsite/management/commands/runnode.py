"""``runnode``: one cluster node, the ASGI server and the cluster runtime in one event loop.

Daphne implements no ASGI lifespan, so this command owns the lifecycle: start the runtime when
the reactor runs, serve, and on SIGTERM drain (readyz 503, rooms handed off, sockets closed with
1012), stop the runtime, stop the reactor, exit 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from typing import Any

import daphne.server
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chatsite import fail_closed
from chatsite.channel_layers import channel_layers_for
from chatsite.daphne_compat import patch_daphne
from chatsite.redact import redact_url
from cluster.embedded import EmbeddedRedis

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


class Command(BaseCommand):
    help = "Run one chat node: HTTP + WebSocket server and cluster runtime."

    def say(self, text: str) -> None:
        """A line for whoever started the node: a log record when logs are JSON lines (a log
        collector reads nothing but JSON from the node), else plain stdout."""
        if settings.CHAT_LOG_JSON:
            logger.info(text)
        else:
            self.stdout.write(text)
            self.stdout.flush()

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--node-name", default=None, help="overrides CHAT_NODE_NAME")

    def handle(self, *args: Any, host: str, port: int, node_name: str | None, **opts: Any) -> None:
        from channels.routing import get_default_application
        from twisted.internet import reactor

        from rooms.runtime import build_runtime, install

        refused = fail_closed.problems()
        if refused:
            # Before anything binds a port or starts a Redis: production fails closed.
            lines = "\n  - ".join(text for _, text in refused)
            raise CommandError(f"refusing to start with DEBUG off:\n  - {lines}")
        patch_daphne()
        if node_name:
            settings.CHAT_NODE_NAME = node_name
        embedded: EmbeddedRedis | None = None
        if not settings.CHAT_REDIS_URL:
            embedded = EmbeddedRedis.start(settings.CHAT_DATA_DIR / "redis")
            settings.CHAT_REDIS_URL = embedded.url
            settings.CHANNEL_LAYERS = channel_layers_for(embedded.url)
            self.say(f"embedded Redis at {redact_url(embedded.url)} (pid {embedded.process.pid})")
        runtime = build_runtime(settings.CHAT_REDIS_URL)
        install(runtime)
        server = daphne.server.Server(
            application=get_default_application(),
            endpoints=[f"tcp:port={port}:interface={host}"],
            signal_handlers=False,
            application_close_timeout=5,
            websocket_handshake_timeout=10,
        )
        state = {"exit": 0, "stopping": False}

        async def start() -> None:
            try:
                await runtime.start()
            except Exception:
                logger.exception("could not start the cluster runtime")
                state["exit"] = 1
                reactor.stop()
                return
            tune_gc()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(shutdown()))
            loop.add_signal_handler(signal.SIGINT, lambda: asyncio.ensure_future(shutdown()))
            redis_url = redact_url(settings.CHAT_REDIS_URL)
            self.say(f"node {runtime.node} serving on http://{host}:{port}/ ({redis_url})")

        async def shutdown() -> None:
            if state["stopping"]:
                return
            state["stopping"] = True
            logger.info("SIGTERM: draining node %s", runtime.node)
            try:
                await runtime.drain()
            finally:
                try:
                    await runtime.stop()
                except Exception:
                    logger.exception("stopping the runtime failed; exiting anyway")
                finally:
                    install(None)
                    reactor.stop()

        reactor.callWhenRunning(lambda: asyncio.ensure_future(start()))
        try:
            server.run()
        finally:
            if embedded is not None:
                embedded.stop()
        sys.exit(int(state["exit"]))
