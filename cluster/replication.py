"""Writes acked only once replicas hold them: the write, then ``WAIT n timeout``, on ONE connection.

Redis replicates asynchronously: a master that dies right after an ack can take the acked write
with it, and Sentinel (or Redis Cluster) promotes a replica that never saw it. With
``min_replicas`` N > 0 (``CHAT_REDIS_MIN_REPLICAS``) a write that must survive that (an append,
a lease claim) is followed by ``WAIT N timeout``, and its caller acks only if N replicas confirm.

WAIT counts the replicas that acknowledged the replication offset of the *calling connection's*
own last write: a WAIT sent on any other connection proves nothing about ours (on Redis 7 a
fresh connection's WAIT returns at once, whatever the replicas lack). So the write and its WAIT
go out together, on the connection that makes the write:

- a plain or Sentinel client (``redis.asyncio.Redis``): a non-transactional pipeline
  [write, WAIT], which is one connection from the pool and one round trip;
- a Redis Cluster client (``RedisCluster``): the master of the key's slot
  (``get_node_from_key``) runs [write, WAIT] with ``ClusterNode.execute_pipeline`` (one of
  that node's connections), so WAIT asks the replicas of the master that took the write.

Too few confirmations in time raise ReplicasBehind (retryable): the command is answered
``unavailable`` if no retry gets through before its deadline. The write itself stays on the
master, and an appended event may already have been delivered. That is still correct: the ack
is the promise (guarantee 2 is about acked events), and the client re-sends with the same
client_id; the dedupe answers the re-send with the seq the first attempt got (``confirm``
waits for that answer to be on the replicas too), so the event is in the log once. If a
fail-over loses it first, it is an unacked event lost with Redis's data: the room goes on above
every seq anyone saw (guarantee 8, cluster.seq_recovery), and the re-send is appended anew.

An answer that was written earlier (a dedupe hit: the first attempt's, or a previous owner's)
may be on the master alone, and this connection's WAIT would not cover it: ``confirm`` rewrites
the key unchanged first (a write that propagates, ordered after the original) and WAITs on that.

With ``min_replicas`` 0 none of this runs: the script is called as before and no WAIT is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import ReplicasBehind

logger = logging.getLogger("cluster.replication")

# Rewrite a string key with its own value and TTL: nothing changes, but the write is replicated,
# after whatever wrote the key before, so a WAIT behind it covers that earlier write too.
# KEYS: 1 the key; returns 1 if it was rewritten, 0 if it does not exist.
REWRITE_UNCHANGED = """
local value = redis.call('GET', KEYS[1])
if not value then return 0 end
redis.call('SET', KEYS[1], value, 'KEEPTTL')
return 1
"""

# Answers from a slot's master that mean "the slot map is stale or the slot is moving": nothing
# was written; TRYAGAIN is Redis Cluster's own word for "try again later".
_TOPOLOGY_ERRORS = (MovedError, AskError, ClusterDownError, TryAgainError, SlotNotCoveredError)


class ReplicaWait:
    """Runs Lua scripts followed by WAIT (see the module docstring)."""

    def __init__(self, redis: Redis | RedisCluster, *, min_replicas: int, timeout_ms: int) -> None:
        if min_replicas < 0:
            raise ValueError(f"min_replicas={min_replicas} must be at least 0")
        self._redis = redis
        self.min_replicas = min_replicas
        self.timeout_ms = max(1, int(timeout_ms))
        self._rewrite = redis.register_script(REWRITE_UNCHANGED)
        self.waits = 0  # WAITs sent
        self.shortfalls = 0  # of them, answered with fewer replicas than wanted

    @property
    def enabled(self) -> bool:
        return self.min_replicas > 0

    async def script(
        self,
        script: AsyncScript,
        *,
        keys: Sequence[str],
        args: Sequence[str],
        wrote: Callable[[Any], bool] | None = None,
    ) -> Any:
        """``script(keys, args)``'s reply; with ``min_replicas``, once that many replicas hold
        what it wrote. ``wrote(reply)`` says whether the script wrote anything (default: it
        did): a refusal that wrote nothing is returned as it is, whatever the replicas say.
        Raises ReplicasBehind, or what the script raises."""
        if not self.enabled:
            return await script(keys=keys, args=args)
        reply, confirmed = await self._with_wait(script, keys, args)
        if wrote is None or wrote(reply):
            self._check(confirmed)
        return reply

    async def confirm(self, key: str) -> None:
        """Return once ``min_replicas`` replicas hold the string ``key`` as it is now on the
        master (an answer written earlier, perhaps by another connection); at once with
        ``min_replicas`` 0. Raises ReplicasBehind."""
        if not self.enabled:
            return
        _, confirmed = await self._with_wait(self._rewrite, [key], [])
        self._check(confirmed)

    async def warn_if_short(self) -> int | None:
        """Log a warning when a master has fewer replicas connected than acks wait for (every
        append there would be answered ``unavailable``); returns the fewest replicas any master
        has (None: not asked, or Redis did not say). Called once when a node starts."""
        if not self.enabled:
            return None
        try:
            if isinstance(self._redis, RedisCluster):
                infos = await self._redis.execute_command(
                    "INFO", "replication", target_nodes=RedisCluster.PRIMARIES
                )
                counts = [int(info.get("connected_slaves", 0)) for info in infos.values()]
            else:
                info = await self._redis.info("replication")
                counts = [int(info.get("connected_slaves", 0))]
        except Exception as exc:
            logger.warning("could not count the connected replicas: %s", exc)
            return None
        fewest = min(counts, default=0)
        if fewest < self.min_replicas:
            logger.warning(
                "CHAT_REDIS_MIN_REPLICAS=%d but a master has %d replica(s) connected: appends "
                "there are answered unavailable until enough replicas confirm them",
                self.min_replicas, fewest,
            )  # fmt: skip
        return fewest

    def _check(self, confirmed: int) -> None:
        if confirmed < self.min_replicas:
            self.shortfalls += 1
            raise ReplicasBehind(self.min_replicas, confirmed, self.timeout_ms)

    async def _with_wait(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[str]
    ) -> tuple[Any, int]:
        """(the script's reply, replicas that confirmed it), NOSCRIPT handled once."""
        run = self._on_slot_master if isinstance(self._redis, RedisCluster) else self._pipelined
        for _ in range(2):
            reply, confirmed = await run(script, keys, args)
            if not isinstance(reply, NoScriptError):
                break
            # A server that never saw the script (a restart, a promoted replica): load, again.
            await self._load(script, keys[0])
        if isinstance(reply, Exception):
            raise reply
        self.waits += 1
        return reply, confirmed

    async def _pipelined(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[str]
    ) -> tuple[Any, int]:
        assert isinstance(self._redis, Redis)
        # evalsha, not script(client=pipe): a pipeline holding Script objects sends SCRIPT
        # EXISTS first, one more round trip on every append.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.wait(self.min_replicas, self.timeout_ms)
            reply, confirmed = await pipe.execute(raise_on_error=False)
        return reply, _count(confirmed)

    async def _on_slot_master(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[str]
    ) -> tuple[Any, int]:
        cluster = self._redis
        assert isinstance(cluster, RedisCluster)
        await cluster.initialize()  # a no-op unless a topology error below asked for a re-read
        node = cluster.get_node_from_key(keys[0])
        if node is None:
            raise SlotNotCoveredError(f"no node serves the slot of {keys[0]!r}")
        commands = [
            PipelineCommand(0, "EVALSHA", script.sha, len(keys), *keys, *args),
            PipelineCommand(1, "WAIT", self.min_replicas, self.timeout_ms),
        ]
        try:
            await node.execute_pipeline(commands)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            # The slot's master is gone or unreachable (a fail-over?): re-read the slot map on
            # the next use, as RedisCluster does itself, and let the caller retry.
            await cluster.aclose()
            raise
        reply, confirmed = commands[0].result, commands[1].result
        if isinstance(reply, _TOPOLOGY_ERRORS):
            await cluster.aclose()
            raise TryAgainError(f"slot of {keys[0]!r} moved or its shard is failing over: {reply}")
        return reply, _count(confirmed)

    async def _load(self, script: AsyncScript, key: str) -> None:
        if isinstance(self._redis, RedisCluster):
            node = self._redis.get_node_from_key(key)
            if node is None:
                raise SlotNotCoveredError(f"no node serves the slot of {key!r}")
            script.sha = await node.execute_command("SCRIPT LOAD", script.script)
        else:
            script.sha = await self._redis.script_load(script.script)


def _count(reply: Any) -> int:
    """WAIT's answer as a count; an error (WAIT on a demoted master, say) confirms nothing."""
    if isinstance(reply, Exception):
        logger.warning("WAIT failed: %s", reply)
        return 0
    return int(reply)
