"""The small containers daphne_compat gives every socket (the sockets themselves are tested
through real nodes: tests/rooms/test_prepared_frames.py, test_socket_limits.py)."""

from __future__ import annotations

import asyncio

import pytest

from chatsite.daphne_compat import InboundQueue, LazyDeque, _inbound_backlog


def test_lazy_deque_behaves_as_autobahn_uses_a_deque() -> None:
    queue = LazyDeque()
    assert len(queue) == 0 and not queue and list(queue) == []
    queue.append((b"abc", False))
    queue.append((b"de", True))
    assert len(queue) == 2 and queue
    assert sum(len(item[0]) for item in queue) == 5  # what TransportProbe.buffered reads
    assert queue.popleft() == (b"abc", False)
    assert queue.popleft() == (b"de", True)
    assert not queue and queue._items is None  # the deque went with its last item
    with pytest.raises(IndexError):
        queue.popleft()


async def test_inbound_queue_hands_frames_over_in_order() -> None:
    queue = InboundQueue()
    assert queue.empty() and queue.qsize() == 0 and _inbound_backlog(queue) == (0, 0)
    queue.put_nowait({"type": "websocket.receive", "text": "one"})
    queue.put_nowait({"type": "websocket.receive", "text": "two!"})
    assert queue.qsize() == 2 and _inbound_backlog(queue) == (2, 7)
    assert (await queue.get())["text"] == "one"
    assert (await queue.get())["text"] == "two!"
    assert queue.empty() and queue._queue is None


async def test_inbound_queue_wakes_a_waiting_reader_and_survives_its_cancel() -> None:
    queue = InboundQueue()
    reader = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not reader.done()
    queue.put_nowait({"type": "websocket.connect"})
    assert (await asyncio.wait_for(reader, 1))["type"] == "websocket.connect"
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    queue.put_nowait({"type": "websocket.disconnect"})  # nobody waits: it is kept
    assert (await asyncio.wait_for(queue.get(), 1))["type"] == "websocket.disconnect"
