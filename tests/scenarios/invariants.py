"""The guarantees of CONTRACT.md, checked on clients' records and on the events API."""

from __future__ import annotations

import itertools
from typing import Any

Frame = dict[str, Any]


def assert_log_is_gapless(events: list[Frame]) -> None:
    seqs = [int(e["seq"]) for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), f"seqs not 1..n: {seqs[:20]}…"


def assert_client_saw_increasing_seqs(durable: list[Frame]) -> None:
    seqs = [int(f["seq"]) for f in durable]
    assert all(a < b for a, b in itertools.pairwise(seqs)), f"out of order: {seqs}"


def assert_client_saw_contiguous(durable: list[Frame], first: int, last: int) -> None:
    seqs = [int(f["seq"]) for f in durable]
    assert seqs == list(range(first, last + 1)), f"client saw {seqs}, expected {first}..{last}"


def assert_acked_once_in_log(acks: dict[str, Frame], events: list[Frame], user: str) -> None:
    by_client: dict[str, list[int]] = {}
    for e in events:
        if e["type"] == "message" and e["user"] == user and e.get("client_id"):
            by_client.setdefault(e["client_id"], []).append(int(e["seq"]))
    for client_id, ack in acks.items():
        assert by_client.get(client_id) == [ack["seq"]], (
            f"ack {client_id} seq {ack['seq']}: log has {by_client.get(client_id)}"
        )
    duplicates = {c: s for c, s in by_client.items() if len(s) > 1}
    assert not duplicates, f"applied twice: {duplicates}"
