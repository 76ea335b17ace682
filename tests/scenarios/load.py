"""Bounded load for scenarios: roaming clients sending at a steady pace, then settling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.scenarios.invariants import (
    assert_acked_once_in_log,
    assert_client_saw_contiguous,
    assert_log_is_gapless,
)
from tests.support.client import RoamingClient
from tests.support.nodes import Node


@dataclass
class Load:
    clients: list[RoamingClient]
    per_client: int
    interval_s: float = 0.03

    async def run(self) -> None:
        await asyncio.gather(*(self._one(c) for c in self.clients))

    async def _one(self, client: RoamingClient) -> None:
        for i in range(self.per_client):
            await client.send(f"{client.name} #{i}")
            await asyncio.sleep(self.interval_s)

    async def settle(self, timeout: float = 20.0) -> None:
        await asyncio.gather(*(c.settle(timeout) for c in self.clients))

    def sent(self) -> int:
        return sum(len(c.sent) for c in self.clients)


async def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> float:
    """Poll ``predicate`` until true; returns the seconds it took. Raises on timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not reached in {timeout}s")
        await asyncio.sleep(step)
    return time.monotonic() - start


def all_events(node: Node, room: str) -> list[dict[str, Any]]:
    """The room's whole log from the events API, page by page (a page holds at most 1000)."""
    events: list[dict[str, Any]] = []
    while True:
        after = int(events[-1]["seq"]) if events else 0
        status, page = node.get(f"/api/rooms/{room}/events?after={after}&limit=1000")
        assert status == 200, page
        if not page["events"]:
            return events
        events.extend(page["events"])


def check_invariants(node: Node, room: str, clients: list[RoamingClient]) -> list[dict[str, Any]]:
    events = all_events(node, room)
    assert_log_is_gapless(events)
    for client in clients:
        assert not client.pending, f"{client.name} has unacked commands"
        assert_acked_once_in_log(client.acks, events, client.name)
        # Every client, across its reconnects, saw every event exactly once and in order.
        seen = sorted({int(f["seq"]) for f in client.durable})
        assert [int(f["seq"]) for f in client.durable] == seen, f"{client.name}: duplicates"
        assert_client_saw_contiguous(client.durable, seen[0], seen[-1])
    return list(events)
