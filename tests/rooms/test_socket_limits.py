"""Guarantee 10 and the socket caps, against a real ``runnode`` process (issue 8, hole 3),
under every ASGI server ``runnode --server`` supports.

A socket that stops reading costs its node at most about ``CHAT_SOCKET_BUFFER_BYTES``; past that
it is closed with 1013 and loses nothing when it resumes. Sockets per principal and per address
are capped (4429), and the counts free up on disconnect.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from chatsite.servers import SERVERS
from cluster.embedded import EmbeddedRedis
from tests.support.client import ChatClient
from tests.support.nodes import Cluster, Node
from tests.support.stalled_socket import StalledSocket, rss_bytes, seed_room

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

BUDGET = 1 << 20
ROOM = "big"
EVENTS = 2000
BODY = "é" * 4000  # 4,000 characters, 8,000 bytes of UTF-8 on the wire
MIB = 1 << 20


def closes_1013(node: Node) -> int:
    assert node.log_path is not None
    return len(re.findall(r"closing with 1013", node.log_path.read_text(errors="replace")))


def wait_until(predicate: object, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(step)
    return False


@pytest.fixture(scope="module", params=SERVERS)
def server(request: pytest.FixtureRequest) -> str:
    """Every test runs under each server (their nodes are built once per server)."""
    return str(request.param)


@pytest.fixture(scope="module")
def big_room(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory, server: str
) -> Iterator[Node]:
    """One node and a room of 2,000 events of 4,000 characters (seeded once per server)."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    cluster = Cluster(
        redis_server,
        Path(tmp_path_factory.mktemp("slow")),
        CHAT_RATE_LIMIT="100000/1",
        CHAT_RATE_LIMIT_PER_ADDRESS="100000/1",
        CHAT_SOCKET_BUFFER_BYTES=str(BUDGET),
        CHAT_MAX_SOCKETS_PER_USER="3",
        RUNNODE_SERVER=server,
    )
    try:
        cluster.create_room(ROOM)
        node = cluster.add("slow1")
        asyncio.run(seed_room(node.ws, ROOM, EVENTS, BODY))
        yield node
    finally:
        cluster.close()


def test_non_reading_sockets_keep_node_memory_bounded(big_room: Node) -> None:
    node = big_room

    async def warm_up() -> None:
        # One full replay to a reading client first: the baseline includes what a normal
        # replay leaves allocated, so the growth measured below is the stalled sockets'.
        reader = ChatClient(node.ws, ROOM, "warm")
        await reader.connect(after=0)
        await reader.wait_for(lambda: reader.last_seq >= EVENTS, 60)
        await reader.close()

    asyncio.run(warm_up())
    baseline = rss_bytes(node.pid)
    sockets = [
        StalledSocket(node.port, f"/ws/rooms/{ROOM}/?name=stall{i}&after=0").connect()
        for i in range(5)
    ]
    peak = baseline
    before = closes_1013(node)

    def sample() -> bool:
        nonlocal peak
        peak = max(peak, rss_bytes(node.pid))
        return closes_1013(node) - before >= len(sockets)

    closed = wait_until(sample, timeout=40, step=0.1)
    growth = peak - baseline
    print(f"baseline {baseline / MIB:.1f} MiB, peak growth {growth / MIB:.1f} MiB")
    try:
        assert growth <= 5 * BUDGET + 20 * MIB, (
            f"RSS grew {growth / MIB:.1f} MiB for 5 stalled sockets (budget 1 MiB each)"
        )
        assert closed, "the stalled sockets were not closed with 1013"
        for stalled in sockets:
            stalled.read_all(timeout=10)
            assert stalled.close_code == 1013
            seqs = stalled.seqs
            assert seqs == list(range(1, len(seqs) + 1)), "a stalled socket saw a hole"
    finally:
        for stalled in sockets:
            stalled.close()


def test_socket_closed_with_1013_resumes_every_event_once(big_room: Node) -> None:
    node = big_room
    before = closes_1013(node)
    stalled = StalledSocket(node.port, f"/ws/rooms/{ROOM}/?name=resumer&after=0").connect()

    async def live_traffic() -> int:
        # Live events while the socket is stalled: they must come back on resume too.
        url = f"{node.ws}/ws/rooms/{ROOM}/?name=talker"
        async with websockets.connect(url, max_size=None) as ws:
            last = 0
            for i in range(30):
                cid = f"live-{uuid.uuid4().hex}-{i}"
                frame = {"type": "send", "body": BODY, "client_id": cid}
                await ws.send(json.dumps(frame, ensure_ascii=False))
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    assert frame["type"] != "error", frame
                    if frame["type"] == "ack":
                        last = int(frame["seq"])
                        break
            return last

    try:
        last_seq = asyncio.run(live_traffic())
        assert wait_until(lambda: closes_1013(node) > before, timeout=40), "no 1013"
        stalled.read_all(timeout=10)
    finally:
        stalled.close()
    assert stalled.close_code == 1013
    first = stalled.seqs
    assert first == list(range(1, len(first) + 1))
    assert len(first) < last_seq, "the stalled socket should not have received everything"

    async def resume() -> list[int]:
        client = ChatClient(node.ws, ROOM, "resumer")
        await client.connect(after=first[-1] if first else 0)
        await client.wait_for(lambda: client.last_seq >= last_seq, 60)
        await client.close()
        return [int(f["seq"]) for f in client.durable]

    second = asyncio.run(resume())
    assert first + second == list(range(1, last_seq + 1)), "an event was lost or duplicated"


def test_a_slow_reader_that_keeps_reading_is_not_cut(big_room: Node) -> None:
    # 320 kB/s: far slower than the replay, but never stopped. It holds the budget and waits
    # for the client; it is not closed, however long the replay takes.
    node = big_room
    before = closes_1013(node)
    path = f"/ws/rooms/{ROOM}/?name=slowpoke&after=0"
    slow = StalledSocket(node.port, path, rcvbuf=65536).connect()
    try:
        closed = slow.read_slowly(seconds=8.0)  # longer than STALL_S
    finally:
        slow.close()
    assert not closed and slow.close_code is None
    assert closes_1013(node) == before
    got = slow.seqs
    assert len(got) > 100 and got == list(range(1, len(got) + 1))


def test_live_traffic_to_a_socket_that_stopped_reading_closes_it_with_1013(big_room: Node) -> None:
    # No replay at all: the socket joins at the head of the room and stops reading while
    # 600 live messages of 8 kB (4.8 MB, more than the kernel's buffers and the budget) go by.
    node = big_room
    before = closes_1013(node)
    stalled = StalledSocket(node.port, f"/ws/rooms/{ROOM}/?name=live-staller").connect()

    async def live_traffic(count: int) -> tuple[int, int]:
        url = f"{node.ws}/ws/rooms/{ROOM}/?name=live-talker"
        first = last = 0
        async with websockets.connect(url, max_size=None) as ws:
            for i in range(count):
                frame = {"type": "send", "body": BODY, "client_id": f"{uuid.uuid4().hex}-{i}"}
                await ws.send(json.dumps(frame, ensure_ascii=False))
                while True:
                    answer = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    assert answer["type"] != "error", answer
                    if answer["type"] == "ack":
                        last = int(answer["seq"])
                        first = first or last
                        break
        return first, last

    try:
        first_live, last_live = asyncio.run(live_traffic(600))
        assert wait_until(lambda: closes_1013(node) > before, timeout=40), "no 1013"
        stalled.read_all(timeout=10)
    finally:
        stalled.close()
    assert stalled.close_code == 1013
    got = stalled.seqs
    assert got == list(range(first_live, first_live + len(got))), "a hole before the close"
    resume_from = got[-1] if got else first_live - 1

    async def resume() -> list[int]:
        client = ChatClient(node.ws, ROOM, "live-staller")
        await client.connect(after=resume_from)
        await client.wait_for(lambda: client.last_seq >= last_live, 60)
        await client.close()
        return [int(f["seq"]) for f in client.durable]

    assert got + asyncio.run(resume()) == list(range(first_live, last_live + 1))


async def open_socket(node: Node, name: str) -> tuple[websockets.ClientConnection, int | None]:
    """Connect as ``name``; the close code if the node refused the socket, else None."""
    url = f"{node.ws}/ws/rooms/{ROOM}/?name={name}&after={EVENTS + 10_000}"  # ahead: no replay
    ws = await websockets.connect(url, max_size=None)
    try:
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
    except websockets.ConnectionClosed:
        return ws, ws.close_code
    assert first["type"] == "hello"
    return ws, None


def test_caps_refuse_with_4429_and_free_on_disconnect(big_room: Node) -> None:
    node = big_room  # CHAT_MAX_SOCKETS_PER_USER=3 on this node

    async def scenario() -> None:
        held = []
        for _ in range(3):
            ws, refused = await open_socket(node, "capped")
            assert refused is None
            held.append(ws)
        _extra, refused = await open_socket(node, "capped")
        assert refused == 4429
        # Another principal from the same address is not affected.
        other, refused = await open_socket(node, "uncapped")
        assert refused is None
        await other.close()
        # Every disconnect path frees its slot: a clean close, and a dropped TCP connection.
        await held[0].close()
        held[1].transport.abort()
        admitted: list[websockets.ClientConnection] = []
        deadline = time.monotonic() + 10
        while len(admitted) < 2:
            assert time.monotonic() < deadline, "the cap never freed up after disconnects"
            ws, refused = await open_socket(node, "capped")
            if refused is None:
                admitted.append(ws)
            else:
                await asyncio.sleep(0.05)  # the node has not seen the disconnect yet: retry
        ws, refused = await open_socket(node, "capped")
        assert refused == 4429, "three held, the fourth must be refused again"
        for ws in [held[2], *admitted]:
            await ws.close()

    asyncio.run(scenario())


def test_a_flooding_client_is_read_no_faster_than_it_is_served(big_room: Node) -> None:
    # 3,000 frames of 15 kB sent without waiting: the node used to queue them all for the
    # consumer (+50 MiB). Now it stops reading the socket while 16 frames wait, and every
    # frame is still answered.
    node = big_room
    frames = 3000
    frame = json.dumps({"type": "nope", "pad": "y" * 15_000})

    async def flood() -> int:
        baseline = peak = rss_bytes(node.pid)
        url = f"{node.ws}/ws/rooms/{ROOM}/?name=flooder&after={EVENTS + 10_000}"
        async with websockets.connect(url, max_size=None) as ws:
            for i in range(frames):
                await asyncio.wait_for(ws.send(frame), 30)
                if i % 50 == 0:
                    peak = max(peak, rss_bytes(node.pid))
            answered = 0
            while answered < frames:
                reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if reply["type"] == "error":
                    assert reply["code"] == "bad_request"
                    answered += 1
                    if answered % 50 == 0:
                        peak = max(peak, rss_bytes(node.pid))
        return peak - baseline

    growth = asyncio.run(flood())
    print(f"flood: RSS grew {growth / MIB:.1f} MiB")
    assert growth <= 15 * MIB, f"RSS grew {growth / MIB:.1f} MiB under a flood of frames"


def test_frames_sent_to_a_hung_consumer_are_not_all_buffered(tmp_path: Path, server: str) -> None:
    # Issue 8, hole 3: 300 frames of 1 MiB sent to a socket whose consumer is stuck (its
    # command waits for a frozen owner) were all queued by daphne: +218 MiB. Now the node
    # stops reading that socket, and answers every frame once the consumer is free again.
    redis_server = EmbeddedRedis.start(appendonly=False)
    cluster = Cluster(redis_server.url, tmp_path, CHAT_LEASE_TTL_MS="10000", RUNNODE_SERVER=server)
    frames = 300
    try:
        cluster.create_room("hung")
        a, b = cluster.add("ha"), cluster.add("hb")

        async def scenario() -> tuple[int, int]:
            starter = ChatClient(a.ws, "hung", "starter")
            await starter.connect()
            await starter.send("claim the room")
            await starter.wait_frame("ack")
            await starter.close()
            rooms = a.get("/api/cluster/")[1]["rooms"]
            owner_name = next(r["owner"] for r in rooms if r["slug"] == "hung")
            owner, other = (a, b) if owner_name == a.name else (b, a)
            url = f"{other.ws}/ws/rooms/hung/?name=flooder"
            async with websockets.connect(url, max_size=None) as ws:
                assert json.loads(await ws.recv())["type"] == "hello"
                baseline = peak = rss_bytes(other.pid)
                owner.signal(signal.SIGSTOP)
                try:
                    stuck = {"type": "send", "body": "waits for the owner", "client_id": "stuck"}
                    await ws.send(json.dumps(stuck))
                    big = "x" * 1_000_000

                    async def push() -> None:
                        for _ in range(frames):
                            await ws.send(big)

                    pusher = asyncio.get_running_loop().create_task(push())
                    loop = asyncio.get_running_loop()
                    until = loop.time() + 4.0  # the consumer stays stuck for CHAT_SEND_TIMEOUT
                    while loop.time() < until and not pusher.done():
                        peak = max(peak, rss_bytes(other.pid))
                        await asyncio.sleep(0.05)
                finally:
                    owner.signal(signal.SIGCONT)
                await asyncio.wait_for(pusher, 60)
                answered = 0
                while answered < frames + 1:  # every frame gets its answer, the stuck one too
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    answered += reply["type"] in ("ack", "error")
            return baseline, peak

        baseline, peak = asyncio.run(scenario())
    finally:
        cluster.close()
        redis_server.stop()
    growth = peak - baseline
    print(f"hung consumer: RSS grew {growth / MIB:.1f} MiB")
    assert growth <= 30 * MIB, f"RSS grew {growth / MIB:.1f} MiB while the consumer was stuck"
