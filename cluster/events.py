"""Durable events as the wire sees them, and their encoding in the log and on pub/sub."""

from __future__ import annotations

import json
import re
from typing import Any

Event = dict[str, Any]


def encode_body(event: Event) -> str:
    """The event as stored in the log: everything but ``seq`` (the stream id carries it)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def decode(seq: int, body: str) -> Event:
    event: Event = json.loads(body)
    event["seq"] = seq
    if event.get("type") == "message" and "id" not in event:
        event["id"] = f"m{seq}"
    return event


def seq_of_stream_id(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])


# ``m`` and a seq: 1 to 18 ASCII digits, no leading zero. Not ``str.isdigit`` (it takes "²" and
# "١", which ``int()`` refuses), and bounded so the seq is always a valid Redis stream id.
_MESSAGE_ID = re.compile(r"m[1-9][0-9]{0,17}")


def seq_of_message_id(message_id: str) -> int | None:
    """Message ids are ``m<seq>``: the seq of the message that created them. Anything else is
    no message at all (None), never an exception."""
    if not isinstance(message_id, str) or _MESSAGE_ID.fullmatch(message_id) is None:
        return None
    return int(message_id[1:])
