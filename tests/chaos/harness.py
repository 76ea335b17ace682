"""One chaos run: recording clients under load in every room, faults, then the end game
(heal, settle, catch up, let presence converge) and the history check."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tests.chaos.checker import Report, Rules, check, save
from tests.chaos.recorder import Journal, RecordedClient, Workload, now
from tests.chaos.world import World

PRESENCE_SLACK_S = 3.0  # on top of the contract's lease + 2 s, for a busy 2-core machine


@dataclass
class Run:
    world: World
    rng: random.Random
    clients_per_room: int = 3
    interval_s: float = 0.3
    journal: Journal = field(default_factory=Journal)
    clients: list[RecordedClient] = field(default_factory=list)
    workload: Workload | None = None

    async def start(self) -> None:
        names = ["ann", "ben", "cat", "dan", "eve", "fay", "gus", "hal", "ivy", "jon"]
        for room in self.world.settings.rooms:
            for i in range(self.clients_per_room):
                client = RecordedClient(self.world.bases, room, names[i % len(names)],
                                        journal=self.journal,
                                        rng=random.Random(self.rng.random()))  # fmt: skip
                client._which = len(self.clients)  # spread clients over the nodes
                self.clients.append(client)
        await asyncio.gather(*(c.ensure_connected() for c in self.clients))
        self.workload = Workload(self.clients, self.rng, interval_s=self.interval_s)
        self.workload.start()

    async def until_acked(self, n: int, timeout_s: float = 20.0) -> None:
        """Wait until ``n`` more commands have been acked (the load is really flowing)."""
        target = sum(len(c.acked) for c in self.clients) + n
        deadline = now() + timeout_s
        while sum(len(c.acked) for c in self.clients) < target:
            if now() > deadline:
                raise AssertionError(f"load not flowing: fewer than {n} acks in {timeout_s}s")
            await asyncio.sleep(0.05)

    async def add_resumer(self, room: str, after: int = 0) -> RecordedClient:
        """A client that joins late and resumes from ``after``: it replays the log (and must be
        told of every hole with a ``gap``)."""
        client = RecordedClient(
            self.world.bases,
            room,
            "zed",
            journal=self.journal,
            label=f"resumer{len(self.clients)}@{room}",
            rng=random.Random(self.rng.random()),
            resume_from=after,
        )
        self.clients.append(client)
        await client.ensure_connected()
        return client

    async def finish(self, settle_s: float = 30.0) -> Report:
        """Stop the load, heal, settle every command, catch up, converge; then check."""
        assert self.workload is not None
        await self.workload.stop()
        world = self.world
        await world.wait_ready(60)
        await asyncio.gather(*(c.settle(settle_s) for c in self.clients))
        logs = {room: await world.log(room) for room in world.settings.rooms}
        # Connected clients catch up to the log's end; presence converges (both bounded).
        ends = {room: int(log[-1]["seq"]) if log else 0 for room, log in logs.items()}
        await asyncio.gather(
            *(c.wait_until(lambda c=c: c.last_seq >= ends[c.room], 10) for c in self.clients)
        )
        limit = world.settings.lease_ms / 1000 + 2 + PRESENCE_SLACK_S
        await asyncio.gather(
            *(
                c.wait_until(lambda c=c: c.presence == self.users_in(c.room), limit)
                for c in self.clients
            )
        )
        logs = {room: await world.log(room) for room in world.settings.rooms}
        rules = Rules(
            answer_budget_s=world.settings.answer_budget_s,
            losses=list(world.losses),
            excuses=list(world.excuses),
        )
        save(world.tmp / "history.json", self.journal.records, logs, rules, world.faults)
        report = check(self.journal.records, logs, rules)
        for anomaly in world.anomalies:
            print(f"  anomaly: {anomaly}")
        return report

    def users_in(self, room: str) -> set[str]:
        return {
            c.current.user
            for c in self.clients
            if c.room == room and c.connected and c.current and c.current.user
        }

    async def close(self) -> None:
        if self.workload is not None:
            with contextlib.suppress(Exception):
                await self.workload.stop()
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)


async def one_fault(
    world: World,
    fault: Callable[[], Awaitable[str]],
    *,
    seed: int = 1,
    rooms_clients: int = 3,
    before: int = 15,
    after_s: float = 2.0,
) -> Report:
    """The short version of a fault for the test suite: load, the fault, more load, check."""
    run = Run(world, random.Random(seed), clients_per_room=rooms_clients)
    try:
        await run.start()
        await run.until_acked(before)
        await fault()
        # One member drops its socket and resumes with after= its last seq: a resumer right
        # after the fault (inside a lost range, when Redis lost one).
        first = run.clients[0]
        if first.current is not None and first.current.connected:
            await first.current.close()
        await asyncio.sleep(after_s)
        await run.until_acked(5)
        for room in world.settings.rooms:
            await run.add_resumer(room)
        report = await run.finish()
        print(report.summary())
        return report
    finally:
        await run.close()
