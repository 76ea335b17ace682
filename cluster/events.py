"""Durable events as the wire sees them, and their encoding in the log and on pub/sub."""

from __future__ import annotations

import json
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


def seq_of_message_id(message_id: str) -> int | None:
    """Message ids are ``m<seq>``: the seq of the message that created them."""
    if len(message_id) < 2 or message_id[0] != "m" or not message_id[1:].isdigit():
        return None
    return int(message_id[1:])
