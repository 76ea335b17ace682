"""Let daphne send the close codes the protocol needs.

Autobahn's ``sendClose`` accepts only 1000 and 3000-4999, but RFC 6455 registers 1011 (internal
error) and 1012 (service restart) for servers to send, and CONTRACT.md promises both. We send
the close frame through autobahn's lower-level ``sendCloseFrame``, which is what ``sendClose``
calls after its check.
"""

from __future__ import annotations

from typing import Any

SERVER_CODES = frozenset({1011, 1012, 1013, 1014})


def allow_server_close_codes() -> None:
    from daphne.ws_protocol import WebSocketProtocol

    if getattr(WebSocketProtocol, "_chat_close_codes", False):
        return
    original = WebSocketProtocol.serverClose

    def server_close(self: Any, code: int | None = None) -> None:
        if code in SERVER_CODES:
            self.sendCloseFrame(code=code, isReply=False)
        else:
            original(self, code)

    WebSocketProtocol.serverClose = server_close
    WebSocketProtocol._chat_close_codes = True
