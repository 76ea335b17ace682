"""The ASGI servers ``runnode`` can run the node under, each in one process and one event loop
with the cluster runtime (``runnode --server NAME``).

- ``daphne``: the design's server (Twisted's asyncio reactor), patched by ``daphne_compat``.
- ``uvicorn``: uvicorn with the ``websockets`` library's protocol.
- ``uvicorn-wsproto``: uvicorn with ``wsproto``.

Each gives the consumer the same two things (see ``uvicorn_node.AsyncioTransportProbe``): the
bytes its transport holds for a socket, which bound a socket's memory (guarantee 10), and a
direct write of a frame framed once per event. Why the default is what it is: docs/asgi-servers.md.
"""

from __future__ import annotations

SERVERS = ("daphne", "uvicorn", "uvicorn-wsproto")
# Runs, for the benchmark, but without guarantee 10 (no probe): see granian_node.
MEASURED_ONLY = ("granian",)
DEFAULT_SERVER = "daphne"


def disconnected_errors() -> tuple[type[BaseException], ...]:
    """What a send to a socket whose client is gone raises, under each server."""
    from autobahn.exception import Disconnected

    errors: list[type[BaseException]] = [Disconnected]
    try:
        from uvicorn.protocols.utils import ClientDisconnected
    except ImportError:  # uvicorn is an optional extra
        pass
    else:
        errors.append(ClientDisconnected)
    return tuple(errors)


DISCONNECTED = disconnected_errors()
