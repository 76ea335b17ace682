"""Small helpers for background tasks that have an owner and never die silently."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

logger = logging.getLogger("cluster")


class TaskGroup:
    """Owns named background tasks; ``stop()`` cancels and awaits every one of them."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self._name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def stop(self, timeout: float = 5.0) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                logger.warning(
                    "%s: %d task(s) ignored cancellation for %.1fs: %s",
                    self._name, len(pending), timeout, sorted(t.get_name() for t in pending),
                )  # fmt: skip
        self._tasks.clear()


async def run_forever(
    name: str,
    step: Callable[[], Awaitable[None]],
    *,
    interval_s: float,
    max_backoff_s: float = 5.0,
) -> None:
    """Call ``step`` every ``interval_s``; on failure log it and back off, never spin or die."""
    backoff = interval_s
    while True:
        try:
            await step()
            backoff = interval_s
            await asyncio.sleep(interval_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s failed; retrying in %.2fs", name, backoff)
            await asyncio.sleep(backoff)
            backoff = min(max_backoff_s, backoff * 2)


async def cancel_and_wait(task: asyncio.Task[Any] | None, timeout: float = 5.0) -> None:
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError, Exception):
        await asyncio.wait_for(task, timeout)
