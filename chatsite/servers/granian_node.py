"""The node under granian's embedded server (``granian.server.embed``, which granian calls
experimental): its Rust threads do the socket I/O and hand the ASGI calls to this process's
asyncio loop, where the runtime runs too.

No transport probe: granian keeps a socket's outgoing bytes on the Rust side, out of Python's
sight, so the consumer's budget sees only its own queue. That is why granian is measured
(bench system ``project-granian``) but not offered as a supported server: docs/asgi-servers.md.
"""

from __future__ import annotations

import asyncio
from typing import Any, TextIO

from cluster.runtime import ClusterRuntime

from .lifecycle import NodeLifecycle


def serve(app: Any, runtime: ClusterRuntime, *, host: str, port: int, stdout: TextIO) -> int:
    from granian.constants import Interfaces
    from granian.server.embed import Server

    server = Server(
        app,
        address=host,
        port=port,
        interface=Interfaces.ASGINL,  # no lifespan: the node owns the runtime's lifecycle
        websockets=True,
        log_access=False,
    )
    node = NodeLifecycle(
        runtime, server="granian", address=f"{host}:{port}", stdout=stdout, stop_server=server.stop
    )

    async def main() -> None:
        if not await node.start():
            return
        await server.serve()
        if not node.stopping:
            await node.shutdown()
        await node.wait()

    asyncio.run(main())
    return node.exit_code
