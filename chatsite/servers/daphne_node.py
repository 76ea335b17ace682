"""The node under daphne: Twisted's asyncio reactor runs the loop, daphne serves, and the
runtime starts once the reactor runs. Daphne implements no ASGI lifespan, so ``runnode`` owns
the lifecycle (``NodeLifecycle``)."""

from __future__ import annotations

import asyncio
from typing import Any, TextIO

from cluster.runtime import ClusterRuntime

from .lifecycle import NodeLifecycle

# Connections the kernel may hold before the server accepts them. Twisted's default is 50: a
# reconnect storm (a drained node's clients, all at once) overflowed it, and every dropped SYN
# cost its client a 1 s retransmit (the bench's storm: p99 2.2 s; the kernel counted
# ListenOverflows). uvicorn's default; the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 2048


def serve(app: Any, runtime: ClusterRuntime, *, host: str, port: int, stdout: TextIO) -> int:
    import daphne.server

    from chatsite.daphne_compat import patch_daphne

    patch_daphne()
    server = daphne.server.Server(
        application=app,
        endpoints=[f"tcp:port={port}:interface={host}:backlog={LISTEN_BACKLOG}"],
        signal_handlers=False,
        application_close_timeout=5,
        websocket_handshake_timeout=10,
    )
    # Imported after daphne.server, which installs the asyncio reactor.
    from twisted.internet import reactor

    node = NodeLifecycle(
        runtime, server="daphne", address=f"{host}:{port}", stdout=stdout, stop_server=reactor.stop
    )
    reactor.callWhenRunning(lambda: asyncio.ensure_future(node.start()))
    server.run()
    if not node.stopping and node.exit_code == 0:
        # The reactor stopped without a signal: daphne could not listen (it logs why and
        # stops the reactor). A supervisor must see a failure, not a clean exit.
        return 1
    return node.exit_code
