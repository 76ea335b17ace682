"""Guarantee 8 with real nodes and real Redis servers: when Redis loses (part of) a room, seqs
go on above everything acked, resumers inside the lost range get ``gap``, and no seq is ever
given to two different events.

(a) FLUSHALL under load while the nodes stay up (hole 11).
(b) A replica that lags (its replication link held by a proxy) is promoted with ``REPLICAOF NO
    ONE``, the nodes are moved to it (their Redis proxy switches over), and the room's owner is
    killed: the next owner must not trust the replica's shorter log (hole 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from cluster.embedded import EmbeddedRedis, free_port, redis_server_binary
from tests.scenarios.load import Load, all_events, wait_until
from tests.support.client import ChatClient, RoamingClient
from tests.support.nodes import Cluster, Node

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

Frame = dict[str, Any]
FLUSH_ROUNDS = 3


class SeqBook:
    """Every (seq -> client_id) anyone was shown: acks, socket frames, the events API. A seq
    that ever maps to two client_ids was reissued."""

    def __init__(self) -> None:
        self.owners: dict[int, set[str]] = {}

    def add(self, seq: int, client_id: str | None) -> None:
        if client_id:
            self.owners.setdefault(int(seq), set()).add(client_id)

    def add_frames(self, frames: list[Frame]) -> None:
        for f in frames:
            if f.get("type") in ("message", "ack"):
                self.add(f["seq"], f.get("client_id"))

    def add_clients(self, clients: list[RoamingClient]) -> None:
        for client in clients:
            for socket in client.sockets:
                self.add_frames(socket.frames)

    def reissued(self) -> dict[int, set[str]]:
        return {seq: ids for seq, ids in self.owners.items() if len(ids) > 1}


def acked(clients: list[RoamingClient]) -> dict[str, int]:
    return {cid: int(f["seq"]) for c in clients for cid, f in c.acks.items()}


async def acks_reach(clients: list[RoamingClient], count: int, timeout: float = 30) -> None:
    await wait_until(lambda: len(acked(clients)) >= count, timeout)


async def resume(node: Node, after: int, beyond: int, timeout: float = 15.0) -> list[Frame]:
    """A client resuming at ``after``: its frames up to the first event above ``beyond``."""
    client = ChatClient(node.ws, "lobby", "late")
    await client.connect(after=after)
    try:
        await client.wait_for(lambda: any(int(f["seq"]) > beyond for f in client.durable), timeout)
    finally:
        await client.close()
    return client.frames


def assert_resumer_told_of_the_loss(frames: list[Frame], after: int, top: int) -> None:
    """Between its position and the first event above ``top`` it saw every event or a gap."""
    position = after
    for frame in frames:
        if frame.get("type") == "gap":
            position = max(position, int(frame["first_available"]) - 1)
        elif frame.get("type") in ("message", "edit", "delete"):
            seq = int(frame["seq"])
            assert seq == position + 1, f"silent skip {position} -> {seq}: {frames[:12]}"
            position = seq
            if seq > top:
                return


# -- (a) FLUSHALL while the nodes stay up ---------------------------------------------------


@pytest.fixture
def volatile_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis.start(tmp_path / "redis", appendonly=False)
    try:
        yield server
    finally:
        server.stop()


async def test_flushall_under_load_never_reissues_a_seq(
    volatile_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    cluster = Cluster(
        volatile_redis.url,
        tmp_path,
        CHAT_LEASE_TTL_MS="1500",
        CHAT_RATE_LIMIT="1000/1",
        CHAT_SEND_TIMEOUT_MS="3000",
    )
    admin = redis.Redis(port=volatile_redis.port)
    book = SeqBook()
    try:
        cluster.create_room("lobby")
        a, b = cluster.add("a"), cluster.add("b")
        clients = [
            RoamingClient([a.ws, b.ws], "lobby", "ann"),
            RoamingClient([b.ws, a.ws], "lobby", "ben"),
        ]
        for client in clients:
            await client.connect()
        top_before = 0
        for _ in range(FLUSH_ROUNDS):
            # A burst from both nodes, and FLUSHALL in its middle: commands are in flight on
            # both nodes, whose memberships vanish too (each presumes the other dead).
            burst = Load(clients, per_client=150, interval_s=0.004)
            wanted = len(acked(clients)) + 30
            sending = asyncio.create_task(burst.run())
            await acks_reach(clients, wanted)
            top_before = max(acked(clients).values())
            admin.flushall()
            await asyncio.wait_for(sending, 60)
            await burst.settle(30)
            book.add_clients(clients)
            assert not book.reissued(), f"seqs given to two events: {book.reissued()}"
        for event in all_events(b, "lobby"):
            book.add(event["seq"], event.get("client_id"))
        assert not book.reissued(), f"seqs given to two events: {book.reissued()}"
        top_before = max(acked(clients).values())
        admin.flushall()  # and once more while nothing is in flight

        after = Load(clients, per_client=10, interval_s=0.01)
        await asyncio.wait_for(after.run(), 30)
        await after.settle(30)
        book.add_clients(clients)
        for event in all_events(b, "lobby"):
            book.add(event["seq"], event.get("client_id"))
        assert not book.reissued(), f"seqs given to two events: {book.reissued()}"
        late_acks = [acked(clients)[cid] for c in clients for cid in list(c.sent)[-10:]]
        assert min(late_acks) > top_before, (top_before, sorted(late_acks))
        frames = await resume(a, after=top_before, beyond=top_before)
        book.add_frames(frames)
        assert_resumer_told_of_the_loss(frames, top_before, top_before)
        frames = await resume(b, after=top_before - 50, beyond=top_before)
        book.add_frames(frames)
        assert_resumer_told_of_the_loss(frames, top_before - 50, top_before)
        assert not book.reissued(), f"seqs given to two events: {book.reissued()}"
        for client in clients:
            await client.close()
    finally:
        admin.close()
        cluster.close()


# -- (b) a lagging replica promoted -----------------------------------------------------------


class Proxy:
    """A TCP proxy on loopback, on its own thread and event loop (the test's loop blocks while
    it starts nodes). ``hold()`` stops forwarding (bytes are read and kept, as on a replication
    link that lags); ``switch(port)`` sends new connections elsewhere and cuts the current ones,
    dropping whatever was held."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._flowing = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    def start(self) -> Proxy:
        self._thread.start()
        self._call(self._start())
        return self

    def hold(self) -> None:
        self._call(self._set_flowing(False))

    def switch(self, target_port: int) -> None:
        self.target_port = target_port
        self._call(self._switch())

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _set_flowing(self, flowing: bool) -> None:
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _switch(self) -> None:
        self._cut()
        self._flowing.set()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        held: list[bytes] = []
        with contextlib.suppress(OSError, ConnectionError, asyncio.IncompleteReadError):
            while data := await source.read(65536):
                held.append(data)
                await self._flowing.wait()
                if sink not in self._writers:
                    return  # cut while held: what was held is lost
                sink.write(b"".join(held))
                held.clear()
                await sink.drain()
        sink.transport.abort()


def start_replica(data_dir: Path, master_port: int) -> tuple[subprocess.Popen[bytes], int]:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
         "--dir", str(data_dir), "--save", "", "--appendonly", "no",
         "--protected-mode", "no", "--logfile", str(data_dir / "redis.log"),
         "--replicaof", "127.0.0.1", str(master_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return process, port


def replicated(master: redis.Redis, replica: redis.Redis) -> bool:
    info = replica.info("replication")
    if info.get("master_link_status") != "up":
        return False
    return int(master.info("replication")["master_repl_offset"]) == int(
        info.get("slave_repl_offset", -1)
    )


@pytest.mark.parametrize("watching", [True, False], ids=["sockets-open", "sockets-closed"])
async def test_a_lagging_replica_promoted_never_reissues_an_acked_seq(
    tmp_path: Path, watching: bool
) -> None:
    """``watching``: the clients keep their sockets through the failover (every node's fan-out
    saw the lost seqs); otherwise they left before it and come back after: only the acks the
    surviving node routed witness the lost seqs."""
    master_server = EmbeddedRedis.start(tmp_path / "master", appendonly=False)
    link = Proxy(master_server.port).start()
    replica_process, replica_port = start_replica(tmp_path / "replica", link.port)
    front = Proxy(master_server.port).start()
    master = redis.Redis(port=master_server.port)
    replica = redis.Redis(port=replica_port)
    cluster = Cluster(
        f"redis://127.0.0.1:{front.port}/0",
        tmp_path,
        CHAT_LEASE_TTL_MS="1500",
        CHAT_RATE_LIMIT="1000/1",
        CHAT_SEND_TIMEOUT_MS="3000",
    )
    book = SeqBook()
    try:
        cluster.create_room("lobby")
        a, b = cluster.add("a"), cluster.add("b")
        clients = [
            RoamingClient([a.ws, b.ws], "lobby", "ann"),
            RoamingClient([b.ws, a.ws], "lobby", "ben"),
        ]
        for client in clients:
            await client.connect()
        # 110 events: the database's reservation (200) was made at 100 and covers all below.
        first = Load(clients, per_client=55, interval_s=0.005)
        await asyncio.wait_for(first.run(), 30)
        await first.settle(30)
        kept = max(acked(clients).values())
        assert kept == 110
        await wait_until(lambda: replicated(master, replica), timeout=15, step=0.05)

        link.hold()  # the replica lags from here on
        second = Load(clients, per_client=20, interval_s=0.005)
        await asyncio.wait_for(second.run(), 30)
        await second.settle(30)
        top = max(acked(clients).values())
        assert top == 150  # same block: Redis's reservation and the database's agree
        await wait_until(lambda: all(len(c.durable) >= top for c in clients), 15)
        assert int(replica.get("chat:{room:lobby}:seq") or 0) == kept  # it lags
        book.add_clients(clients)
        for event in all_events(a, "lobby"):
            book.add(event["seq"], event.get("client_id"))

        if not watching:
            for client in clients:
                await client.close()
        owner_name = (master.hget("chat:{room:lobby}:lease", "node") or b"").decode()
        owner = a if owner_name == "a" else b
        survivor = b if owner is a else a
        replica.execute_command("REPLICAOF", "NO", "ONE")
        master_server.stop(signal.SIGKILL)
        link.stop()
        front.switch(replica_port)  # the nodes' Redis is the promoted replica now
        owner.kill()  # the next owner decides where the room goes on
        if not watching:
            for client in clients:
                await client.connect()  # resumes after its last seq, on the survivor

        third = Load(clients, per_client=10, interval_s=0.01)
        await asyncio.wait_for(third.run(), 60)
        await third.settle(40)
        book.add_clients(clients)
        for event in all_events(survivor, "lobby"):
            book.add(event["seq"], event.get("client_id"))
        assert not book.reissued(), f"acked seqs given to other events: {book.reissued()}"
        late = [acked(clients)[cid] for c in clients for cid in list(c.sent)[-10:]]
        assert min(late) > top, (top, sorted(late))

        frames = await resume(survivor, after=kept - 10, beyond=top)
        book.add_frames(frames)
        assert not book.reissued(), f"acked seqs given to other events: {book.reissued()}"
        assert_resumer_told_of_the_loss(frames, kept - 10, top)
        for client in clients:
            await client.close()
    finally:
        cluster.close()
        master.close()
        replica.close()
        front.stop()
        link.stop()
        master_server.stop(signal.SIGKILL)
        if replica_process.poll() is None:
            replica_process.kill()
        replica_process.wait(10)
