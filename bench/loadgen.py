"""The scenarios: stepped fan-out rates, idle sockets, a connect storm; one asyncio process."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.clients import Client, Tally, make_body
from bench.proc import CpuMeter, load_average, total_rss
from bench.systems import System

GOOD_P99_MS = 250.0
# The generator is "the bottleneck" when it used this share of one core (it has one thread).
GENERATOR_BOUND_SHARE = 0.75


def percentile(values: Sequence[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def ms(value_ns: float | None) -> float | None:
    return None if value_ns is None else round(value_ns / 1e6, 2)


class LoopLag:
    """How late a 20 ms timer fires in this process: the generator's own saturation."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.02)
            self.samples.append((loop.time() - before - 0.02) * 1000)

    async def stop(self) -> float | None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        value = percentile(self.samples, 0.99)
        return None if value is None else round(value, 1)


def calls_per_message(
    before: dict[str, int], after: dict[str, int], messages: int
) -> dict[str, float]:
    """Redis calls per message sent in a step, by command (the busiest ones), and in all."""
    if not after or not messages:
        return {}
    delta = {name: after[name] - before.get(name, 0) for name in after}
    busiest = sorted((n for n in delta if delta[n] > 0), key=delta.__getitem__, reverse=True)
    shown = {name: round(delta[name] / messages, 2) for name in busiest[:8]}
    shown["all"] = round(sum(delta.values()) / messages, 2)
    return shown


@dataclass
class Plan:
    """Sizes and rates of one run (``--quick`` shrinks them)."""

    step_s: float
    drain_s: float
    s1_rates: list[int]
    big_rates: list[int]
    idle_sockets: int
    storm_sockets: int
    max_bad_steps: int
    profile_rate: int = 20000
    profile_s: float = 12.0


QUICK = Plan(
    step_s=3.0,
    drain_s=3.0,
    s1_rates=[500, 1000, 2000, 4000, 8000, 16000, 32000, 64000],
    big_rates=[1000, 2500, 5000, 10000, 20000, 40000],
    idle_sockets=1000,
    storm_sockets=1000,
    max_bad_steps=1,
)
FULL = Plan(
    step_s=6.0,
    drain_s=4.0,
    s1_rates=[500, 1000, 2000, 3000, 4000, 6000, 8000, 12000, 16000, 24000, 32000, 48000],
    big_rates=[1000, 2500, 5000, 7500, 10000, 15000, 20000, 30000, 40000, 60000],
    idle_sockets=2000,
    storm_sockets=1000,
    max_bad_steps=2,
)


class Generator:
    def __init__(self, system: System, *, deadline: float) -> None:
        self.system = system
        self.deadline = deadline
        self._next_step = 1
        self._next_client = 1
        self.connect_errors: list[str] = []

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def new_tally(self) -> Tally:
        tally = Tally(step=self._next_step)
        self._next_step += 1
        return tally

    def meter(self) -> CpuMeter:
        return CpuMeter(self.system.server_pids, self.system.redis_pid)

    def base_record(self, scenario: str) -> dict[str, Any]:
        return {
            "system": self.system.name,
            "scenario": scenario,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "loadavg": load_average(),
        }

    # -- sockets

    def make_clients(self, rooms: list[str], per_room: int) -> list[Client]:
        clients = []
        for room in rooms:
            for member in range(per_room):
                index = self._next_client
                self._next_client += 1
                node = member % 2  # every room spans both nodes
                clients.append(
                    Client(
                        index=index,
                        node=node,
                        room=room,
                        url=self.system.ws_url(node, room, f"g{index}"),
                        origin=self.system.origin(node),
                        protocol=self.system.protocol,
                    )
                )
        return clients

    async def connect(
        self, clients: list[Client], tally: Tally, *, concurrency: int, timeout: float = 30.0
    ) -> tuple[list[float], int]:
        """Connect every client (``concurrency`` at a time); returns the connect times and
        the number that failed."""
        gate = asyncio.Semaphore(concurrency)
        times: list[float] = []
        failed = 0

        async def one(client: Client) -> None:
            nonlocal failed
            async with gate:
                if self.time_left() <= 0:
                    failed += 1  # out of this system's time budget: do not start more
                    return
                try:
                    times.append(await client.open(tally, timeout))
                except Exception as exc:
                    failed += 1
                    if len(self.connect_errors) < 5:
                        self.connect_errors.append(repr(exc)[:300])

        await asyncio.gather(*(one(client) for client in clients))
        return times, failed

    async def close(self, clients: list[Client]) -> None:
        gate = asyncio.Semaphore(200)

        async def one(client: Client) -> None:
            async with gate:
                await client.close()

        await asyncio.gather(*(one(client) for client in clients))

    def attach(self, clients: list[Client], tally: Tally) -> None:
        for client in clients:
            client.tally = tally

    async def warm_up(self) -> None:
        """A few sockets and messages first, so lazy imports and pools are not measured."""
        clients = self.make_clients(["warm0"], 4)
        tally = self.new_tally()
        await self.connect(clients, tally, concurrency=4)
        for number in range(20):
            body = make_body(tally.step, clients[0].index, number, time.monotonic_ns())
            await clients[number % 2].send_message(body, f"{tally.step}-0-{number}-0")
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        await self.close(clients)

    # -- stepped fan-out

    async def open_rooms(
        self, scenario: str, rooms: list[str], per_room: int, *, concurrency: int = 50
    ) -> tuple[list[Client], dict[str, Any]]:
        """Connect ``per_room`` members to each room, spread over the nodes."""
        clients = self.make_clients(rooms, per_room)
        join = self.new_tally()
        started = time.monotonic()
        times, failed = await self.connect(clients, join, concurrency=concurrency)
        record = {
            **self.base_record(scenario),
            "kind": "connect",
            "sockets": len(clients),
            "failed": failed,
            "connect_s": round(time.monotonic() - started, 2),
            "connect_p50_ms": ms(_ns(percentile(times, 0.5))),
            "connect_p99_ms": ms(_ns(percentile(times, 0.99))),
            "presence_frames": join.presence_frames,
        }
        return [client for client in clients if client.ws is not None], record

    async def ramp(
        self,
        scenario: str,
        live: list[Client],
        rooms: list[str],
        senders_per_room: int,
        rates: list[int],
        plan: Plan,
        *,
        profile: Any = None,
    ) -> list[dict[str, Any]]:
        """Stepped offered rates over connected clients until a step is not good."""
        senders = [
            client
            for room in rooms
            for client in [c for c in live if c.room == room][:senders_per_room]
        ]
        records: list[dict[str, Any]] = []
        room_size = {room: sum(1 for c in live if c.room == room) for room in rooms}
        await asyncio.sleep(1.0)  # let presence settle before measuring
        if profile is not None:
            records.append(
                await self._profile_step(scenario, live, senders, room_size, plan, profile)
            )
            return records
        bad = 0
        for rate in rates:
            if self.time_left() < plan.step_s + plan.drain_s + 5:
                records.append(
                    {
                        **self.base_record(scenario),
                        "kind": "skipped",
                        "reason": "time budget",
                        "offered_target": rate,
                    }
                )
                break
            record = await self.step(scenario, live, senders, room_size, rate, plan)
            records.append(record)
            print(_summary(record), flush=True)
            bad = 0 if record["good"] else bad + 1
            if bad >= plan.max_bad_steps or record["generator_bound"]:
                break
            if record["delivered_per_s"] < 0.5 * record["offered_per_s"]:
                break  # saturated: higher rates only pile up backlog
            await asyncio.sleep(0.5)
        return records

    def redis_calls(self) -> dict[str, int]:
        """Redis's own count of calls per command so far (INFO commandstats)."""
        redis_server = getattr(self.system, "redis", None)
        if redis_server is None:
            return {}
        import redis

        client = redis.Redis.from_url(redis_server.url)
        try:
            stats = client.info("commandstats")
        except redis.RedisError:
            return {}
        finally:
            client.close()
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    async def step(
        self,
        scenario: str,
        clients: list[Client],
        senders: list[Client],
        room_size: dict[str, int],
        rate: int,
        plan: Plan,
        duration: float | None = None,
    ) -> dict[str, Any]:
        duration = duration or plan.step_s
        fanout = statistics.mean(room_size[s.room] for s in senders)
        message_rate = rate / fanout
        tally = self.new_tally()
        self.attach(clients, tally)
        lag = LoopLag()
        calls_before = await asyncio.to_thread(self.redis_calls)
        meter = self.meter()
        loop = asyncio.get_running_loop()
        total = max(1, round(message_rate * duration))
        expected = 0
        sent = 0
        start = loop.time()
        while sent < total:
            due = min(total, int((loop.time() - start) * message_rate) + 1)
            while sent < due:
                sender = senders[sent % len(senders)]
                now = time.monotonic_ns()
                body = make_body(tally.step, sender.index, sent, now)
                await sender.send_message(body, f"{tally.step}-{sender.index}-{sent}-{now}")
                expected += room_size[sender.room]
                sent += 1
            delay = start + sent / message_rate - loop.time()
            await asyncio.sleep(max(0.0, delay))
        send_s = loop.time() - start
        drain_deadline = loop.time() + plan.drain_s
        while tally.unique < expected and loop.time() < drain_deadline:
            await asyncio.sleep(0.02)
        if scenario == "s1" and self.system.protocol == "project":
            # acks arrive after the deliveries they cover only sometimes: give them the drain too
            while tally.acks < sent and loop.time() < drain_deadline:
                await asyncio.sleep(0.02)
        cpu = meter.stop()
        calls_after = await asyncio.to_thread(self.redis_calls)
        lag_p99 = await lag.stop()
        latencies = tally.latencies_ns
        p99 = ms(percentile(latencies, 0.99))
        lost = expected - tally.unique
        generator_share = cpu["generator_cpu_s"] / cpu["wall_s"]
        record = {
            **self.base_record(scenario),
            "kind": "step",
            "offered_target": rate,
            "fanout": round(fanout, 1),
            "messages": sent,
            "expected": expected,
            "delivered": tally.unique,
            "offered_per_s": round(expected / send_s),
            "delivered_per_s": round(tally.unique / cpu["wall_s"]),
            "lost": lost,
            "loss_share": round(lost / expected, 4) if expected else 0.0,
            "duplicates": tally.duplicates,
            "late_from_earlier_steps": tally.stale,
            "p50_ms": ms(percentile(latencies, 0.5)),
            "p90_ms": ms(percentile(latencies, 0.9)),
            "p99_ms": p99,
            "max_ms": ms(max(latencies) if latencies else None),
            "good": lost == 0 and tally.duplicates == 0 and p99 is not None and p99 < GOOD_P99_MS,
            "send_s": round(send_s, 2),
            "wall_s": round(cpu["wall_s"], 2),
            "server_cpu_s": round(cpu["server_cpu_s"], 2),
            "server_cores": round(cpu["server_cpu_s"] / cpu["wall_s"], 2),
            "cores_per_server": [round(v / cpu["wall_s"], 2) for v in cpu["per_server_cpu_s"]],
            "cpu_us_per_delivery": round(cpu["server_cpu_s"] / tally.unique * 1e6, 1)
            if tally.unique
            else None,
            "redis_cores": round(cpu["redis_cpu_s"] / cpu["wall_s"], 2),
            "generator_core_share": round(generator_share, 2),
            "generator_loop_lag_p99_ms": lag_p99,
            "generator_bound": generator_share >= GENERATOR_BOUND_SHARE,
            "redis_calls_per_message": calls_per_message(calls_before, calls_after, sent),
        }
        if self.system.protocol == "project":
            record.update(
                acks=tally.acks,
                ack_p50_ms=ms(percentile(tally.ack_latencies_ns, 0.5)),
                ack_p99_ms=ms(percentile(tally.ack_latencies_ns, 0.99)),
                errors=tally.errors,
                error_samples=tally.error_samples,
                presence_frames=tally.presence_frames,
            )
        self.last_seq = dict(tally.last_seq)
        return record

    async def _profile_step(
        self,
        scenario: str,
        clients: list[Client],
        senders: list[Client],
        room_size: dict[str, int],
        plan: Plan,
        profile: Any,
    ) -> dict[str, Any]:
        """One long step at ``plan.profile_rate`` while ``profile`` samples a node."""
        handle = profile.start()
        try:
            record = await self.step(
                scenario,
                clients,
                senders,
                room_size,
                plan.profile_rate,
                plan,
                duration=plan.profile_s + 2,
            )
        finally:
            profile.finish(handle)
        record["kind"] = "profile-step"
        print(_summary(record), flush=True)
        return record

    # -- idle sockets

    def rss(self) -> int:
        return total_rss(self.system.server_pids)

    def idle_record(
        self,
        before: int,
        clients: list[Client],
        connect_records: list[dict[str, Any]],
        cpu: dict[str, float],
    ) -> dict[str, Any]:
        """Memory of the nodes per connected socket (nothing sent yet)."""
        after = self.rss()
        connected = len(clients)
        return {
            **self.base_record("idle"),
            "kind": "idle",
            "sockets": sum(r["sockets"] for r in connect_records),
            "connected": connected,
            "failed": sum(r["failed"] for r in connect_records),
            "connect_s": round(sum(r["connect_s"] for r in connect_records), 2),
            "rss_before_mb": round(before / 2**20, 1),
            "rss_after_mb": round(after / 2**20, 1),
            "rss_per_node_mb": [
                round(total_rss([pid]) / 2**20, 1) for pid in self.system.server_pids
            ],
            "kb_per_socket": round((after - before) / max(1, connected) / 1024, 1),
            "server_cpu_s": round(cpu["server_cpu_s"], 2),
            "presence_frames": sum(r["presence_frames"] for r in connect_records),
        }

    # -- connect storm

    async def storm(
        self, rooms: list[str], per_room: int, last_seq: dict[str, int], replay: int = 10
    ) -> dict[str, Any]:
        clients = self.make_clients(rooms, per_room)
        resumed = 0
        if self.system.protocol == "project":
            for client in clients:
                seq = last_seq.get(client.room, 0)
                after = max(0, seq - replay)
                client.expect_replay = seq - after
                client.url = self.system.ws_url(
                    client.node, client.room, f"g{client.index}", after=after
                )
        tally = self.new_tally()
        meter = self.meter()
        started = time.monotonic()
        # every socket at once: no gate
        times, failed = await self.connect(clients, tally, concurrency=len(clients), timeout=30)
        connected_s = time.monotonic() - started
        resume_times: list[float] = []

        async def wait_resumed(client: Client) -> None:
            nonlocal resumed
            if client.ws is None:
                return
            try:
                async with asyncio.timeout(max(1.0, 30 - (time.monotonic() - started))):
                    await client.resumed.wait()
            except TimeoutError:
                return
            resumed += 1
            resume_times.append(time.monotonic() - started)

        await asyncio.gather(*(wait_resumed(client) for client in clients))
        all_s = time.monotonic() - started
        await asyncio.sleep(1.0)  # presence frames caused by the storm still arriving
        cpu = meter.stop()
        record = {
            **self.base_record("storm"),
            "kind": "storm",
            "sockets": len(clients),
            "connected": len(times),
            "failed": failed,
            "all_connected_s": round(connected_s, 2),
            "all_ready_s": round(all_s, 2),
            "connect_p50_ms": ms(_ns(percentile(times, 0.5))),
            "connect_p99_ms": ms(_ns(percentile(times, 0.99))),
            "connect_max_ms": ms(_ns(max(times) if times else None)),
            "resumed": resumed if self.system.protocol == "project" else None,
            "errors": self.connect_errors[:5],
            "replayed_frames": tally.stale,
            "presence_frames": tally.presence_frames,
            "server_cpu_s": round(cpu["server_cpu_s"], 2),
        }
        await self.close(clients)
        return record


def _ns(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e9


def _summary(record: dict[str, Any]) -> str:
    return (
        f"  {record['system']:<16} {record['scenario']:<4} offered {record['offered_per_s']:>7}/s"
        f" delivered {record['delivered_per_s']:>7}/s lost {record['lost']:>7}"
        f" p99 {record['p99_ms']} ms cpu {record['cpu_us_per_delivery']} us/delivery"
        f" gen {record['generator_core_share']:.2f} core"
        f" load {record['loadavg'][0]}"
    )
