"""The WebSocket protocol of CONTRACT.md: parsing client frames, building server frames."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cluster.errors import CommandError, ErrorCode

CLIENT_TYPES = ("send", "edit", "delete", "typing")
MAX_FRAME_CHARS = 16_000  # a body of 4,000 characters is far below; anything bigger is abuse


@dataclass(frozen=True)
class ClientFrame:
    type: str
    body: str = ""
    id: str = ""
    client_id: str | None = None


def parse_client_frame(text: str) -> ClientFrame:
    """Parse one text frame; raises CommandError('bad_request' | 'too_large') with a reason."""
    if len(text) > MAX_FRAME_CHARS:
        raise CommandError("too_large", f"frame has {len(text)} characters")
    try:
        data = json.loads(text)
    except ValueError:
        raise CommandError("bad_request", "frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise CommandError("bad_request", "frame must be a JSON object")
    kind = data.get("type")
    if kind not in CLIENT_TYPES:
        raise CommandError("bad_request", f"unknown frame type {kind!r}")
    client_id = data.get("client_id")
    if client_id is not None and (not isinstance(client_id, str) or not client_id):
        raise CommandError("bad_request", "client_id must be a non-empty string")
    body = data.get("body", "")
    if kind in ("send", "edit") and not isinstance(body, str):
        raise CommandError("bad_request", "body must be a string")
    message_id = data.get("id", "")
    if kind in ("edit", "delete") and (not isinstance(message_id, str) or not message_id):
        raise CommandError("bad_request", f"{kind} needs the id of a message")
    return ClientFrame(kind, body if isinstance(body, str) else "", message_id, client_id)


def error_frame(code: ErrorCode, detail: str, client_id: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "detail": detail}
    if client_id is not None:
        frame["client_id"] = client_id
    return frame


def parse_after(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise CommandError("bad_request", f"after={raw!r} must be a whole number >= 0")
    return int(raw)
