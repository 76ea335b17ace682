"""The WebSocket protocol of CONTRACT.md: parsing client frames, building server frames."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cluster.errors import CommandError, ErrorCode

CLIENT_TYPES = ("send", "edit", "delete", "typing")
MAX_FRAME_CHARS = 16_000
# An oversized frame is read for its client_id only up to this size: a 4,000-character body
# escaped as \uXXXX pairs stays under it; anything bigger is abuse and gets no such effort.
CLIENT_ID_SCAN_CHARS = 64_000  # a body of 4,000 characters is far below; anything bigger is abuse
MAX_SEQ = 2**53  # the largest seq a client may name: exact in a JavaScript number


@dataclass(frozen=True)
class ClientFrame:
    type: str
    body: str = ""
    id: str = ""
    client_id: str | None = None


class FrameRefused(CommandError):
    """A frame refused by the parser. ``client_id`` is the frame's own when it had a usable one
    (a JSON object whose ``client_id`` is text), so the ``error`` frame can name the command
    it answers, as every other answer does (guarantee 9)."""

    def __init__(self, code: ErrorCode, detail: str, client_id: str | None = None) -> None:
        super().__init__(code, detail)
        self.client_id = client_id


def refuse_oversized(text: str) -> FrameRefused | None:
    """The refusal of a frame over MAX_FRAME_CHARS (None if it is not), naming the frame's
    client_id when it has one: a body just over the limit, escaped by the client's JSON encoder,
    is an honest mistake whose error the client must be able to match to its command."""
    if len(text) <= MAX_FRAME_CHARS:
        return None
    client_id = None
    if len(text) <= CLIENT_ID_SCAN_CHARS:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            data = None
        found = data.get("client_id") if isinstance(data, dict) else None
        if isinstance(found, str) and found and _encodable(found):
            client_id = found
    return FrameRefused("too_large", f"frame has {len(text)} characters", client_id)


def parse_client_frame(text: str) -> ClientFrame:
    """Parse one text frame; raises FrameRefused('bad_request' | 'too_large') with a reason.

    What comes back is safe to hand to the cluster: every string in it encodes to UTF-8 (Redis,
    the pub/sub RPC and the socket all need that). NUL is ordinary text here (JSON escapes it).
    """
    oversized = refuse_oversized(text)
    if oversized is not None:
        raise oversized
    try:
        data = json.loads(text)
    except ValueError:  # also ints beyond Python's 4,300-digit limit
        raise FrameRefused("bad_request", "frame is not valid JSON") from None
    except RecursionError:  # '[[[[...' nested deeper than the decoder's stack
        raise FrameRefused("bad_request", "frame is nested too deeply") from None
    if not isinstance(data, dict):
        raise FrameRefused("bad_request", "frame must be a JSON object")
    client_id = data.get("client_id")
    if client_id is not None and (not isinstance(client_id, str) or not client_id):
        raise FrameRefused("bad_request", "client_id must be a non-empty string")
    if client_id is not None and not _encodable(client_id):
        raise FrameRefused("bad_request", "client_id is not valid Unicode text")
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        raise FrameRefused("bad_request", f"unknown frame type {_shown(kind)}", client_id)
    body = data.get("body", "")
    if kind in ("send", "edit"):
        if not isinstance(body, str):
            raise FrameRefused("bad_request", "body must be a string", client_id)
        if not _encodable(body):
            raise FrameRefused("bad_request", "body is not valid Unicode text", client_id)
    message_id = data.get("id", "")
    if kind in ("edit", "delete"):
        if not isinstance(message_id, str) or not message_id:
            raise FrameRefused("bad_request", f"{kind} needs the id of a message", client_id)
        if not _encodable(message_id):
            raise FrameRefused("bad_request", "id is not valid Unicode text", client_id)
    return ClientFrame(
        kind,
        body if kind in ("send", "edit") else "",
        message_id if kind in ("edit", "delete") else "",
        client_id,
    )


def _encodable(value: str) -> bool:
    """JSON may carry lone surrogates (``"\\ud800"``): valid in a Python str, not in UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(value: object) -> str:
    """A short, always-encodable rendering of a client's value for an error detail."""
    if not isinstance(value, str):
        return type(value).__name__  # not its repr: a list may be nested a thousand deep
    shown = ascii(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def error_frame(code: ErrorCode, detail: str, client_id: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "detail": detail}
    if client_id is not None:
        frame["client_id"] = client_id
    return frame


def parse_after(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    return parse_seq("after", raw)


def parse_seq(name: str, raw: str) -> int:
    """A seq from a query string: ASCII digits only ("²" and "١" pass ``str.isdigit``, "-0",
    " 3" and "1_0" pass ``int()``), at most ``MAX_SEQ`` (more is no seq: Redis refuses the
    stream id, and ``int()`` refuses 4,300 digits)."""
    if not (raw.isascii() and raw.isdigit()):
        raise CommandError("bad_request", f"{name}={_shown(raw)} must be a whole number >= 0")
    significant = raw.lstrip("0")
    if len(significant) > len(str(MAX_SEQ)):
        raise CommandError("bad_request", f"{name}={_shown(raw)} is above the largest seq")
    value = int(significant or "0")
    if value > MAX_SEQ:
        raise CommandError("bad_request", f"{name}={value} is above the largest seq ({MAX_SEQ})")
    return value
