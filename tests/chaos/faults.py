"""Fault injectors, each bounded in time; each notes what it did (and when) on the world so the
checker knows which node could not answer (SIGSTOP) and when Redis may have lost data.

Blocking work runs in threads: the recording clients keep reading while a fault happens.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from collections.abc import Awaitable, Callable

from tests.chaos.checker import Excuse, Loss
from tests.chaos.recorder import now
from tests.chaos.world import World
from tests.support.nodes import Node

REPLICATION_SLACK_S = 0.5

Fault = Callable[[World, random.Random], Awaitable[str]]


# -- nodes --------------------------------------------------------------------------------


async def restart_node(world: World, node: Node, timeout_s: float = 60.0) -> None:
    """Start a stopped node again, same name and port; its previous log is kept aside."""
    if node.log_path is not None and node.log_path.exists():
        n = len(list(node.log_path.parent.glob(node.log_path.name + ".*")))
        node.log_path.rename(node.log_path.with_name(f"{node.log_path.name}.{n}"))
    await asyncio.to_thread(node.start, wait=True, timeout=timeout_s)


async def kill_node(world: World, node: Node, *, down_s: float = 0.5, role: str = "") -> str:
    """SIGKILL, stay down ``down_s``, start again."""
    world.note(f"SIGKILL {role}node {node.name}")
    await asyncio.to_thread(node.kill)
    await asyncio.sleep(down_s)
    await restart_node(world, node)
    world.note(f"node {node.name} restarted")
    return f"kill {role}{node.name}"


async def drain_node(world: World, node: Node, *, timeout_s: float = 30.0) -> str:
    """SIGTERM: the node drains and exits 0; then it starts again."""
    world.note(f"SIGTERM node {node.name} (drain)")
    try:
        code = await asyncio.to_thread(node.terminate, timeout_s)
    except subprocess.TimeoutExpired:
        world.anomalies.append(f"node {node.name} did not exit {timeout_s}s after SIGTERM")
        await asyncio.to_thread(node.kill)
        code = None
    if code != 0:
        world.anomalies.append(f"node {node.name} exited {code} after SIGTERM, not 0")
    world.note(f"node {node.name} drained (exit {code})")
    await restart_node(world, node)
    world.note(f"node {node.name} restarted")
    return f"drain {node.name}"


async def pause_node(world: World, node: Node, *, pause_s: float) -> str:
    """SIGSTOP for ``pause_s`` (longer than the lease: the room moves on), then SIGCONT."""
    start = now()
    world.note(f"SIGSTOP node {node.name} for {pause_s:.1f}s")
    node.signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(pause_s)
    finally:
        node.signal(signal.SIGCONT)
        world.excuses.append(Excuse(node.name, start, now()))
    world.note(f"SIGCONT node {node.name}")
    return f"pause {node.name}"


async def pick_node(world: World, rng: random.Random, room: str, *, owner: bool) -> Node:
    found = await world.owner_of(room)
    if owner and found is not None:
        return found
    others = [n for n in world.alive() if n is not found] or world.alive()
    return rng.choice(others)


async def kill_owner(world: World, rng: random.Random, room: str = "lobby") -> str:
    return await kill_node(world, await pick_node(world, rng, room, owner=True), role="owner ")


async def kill_non_owner(world: World, rng: random.Random, room: str = "lobby") -> str:
    node = await pick_node(world, rng, room, owner=False)
    return await kill_node(world, node, role="non-owner ")


# -- Redis ----------------------------------------------------------------------------------


async def restart_redis(world: World, *, keep_data: bool, down_s: float = 1.0) -> str:
    """SIGKILL Redis and start it again on the same port. With ``keep_data`` its append-only
    file (fsync always) brings back every acked write; without, it comes back empty."""
    redis = world.redis
    assert redis is not None
    world.note(f"SIGKILL Redis ({'AOF kept' if keep_data else 'data wiped'})")
    killed = now()
    await asyncio.to_thread(redis.kill)
    if not keep_data:
        await asyncio.to_thread(redis.wipe)
    await asyncio.sleep(down_s)
    await asyncio.to_thread(redis.start)
    if not keep_data:
        world.losses.append(Loss(killed, through=now()))
    world.note("Redis restarted")
    return "redis restart " + ("aof" if keep_data else "empty")


async def promote_lagging_replica(world: World, *, lag_s: float = 1.5) -> str:
    """Hold the replica's feed back for ``lag_s`` while writes go on, kill the primary, promote
    the replica (``REPLICAOF NO ONE``) and point the nodes' proxy at it: what the replica had
    not received is lost."""
    primary, replica = world.redis, world.replica
    assert primary is not None and replica is not None
    assert world.proxy is not None and world.repl_proxy is not None
    world.note(f"replica feed held back for {lag_s:.1f}s")
    held_from = now()
    world.repl_proxy.blackhole()
    await asyncio.sleep(lag_s)
    killed = now()
    world.note("primary killed, lagging replica promoted")
    await asyncio.to_thread(primary.kill)
    world.repl_proxy.reset()
    await asyncio.to_thread(world.repl_proxy.stop)
    await asyncio.to_thread(replica.client().execute_command, "REPLICAOF", "NO", "ONE")
    replica.replicaof = None  # a later restart brings it back as a primary
    world.proxy.set_upstream(replica.port)
    world.proxy.reset()
    # What the replica had not received when its feed stopped may be lost too: replication is
    # asynchronous (CHAT_REDIS_MIN_REPLICAS=0), a few milliseconds behind when healthy.
    world.losses.append(Loss(killed, since=held_from - REPLICATION_SLACK_S, through=now()))
    world.old_redis.append(primary)
    world.redis, world.replica, world.repl_proxy = replica, None, None
    return "promote lagging replica"


# -- the link to Redis (proxy) ------------------------------------------------------------


async def slow_redis(world: World, *, delay_s: float, for_s: float) -> str:
    assert world.proxy is not None
    world.note(f"Redis slowed by {delay_s * 1000:.0f} ms per chunk for {for_s:.1f}s")
    world.proxy.slow(delay_s)
    try:
        await asyncio.sleep(for_s)
    finally:
        world.proxy.pass_through()
    world.note("Redis link normal")
    return "slow redis"


async def reset_redis_links(world: World) -> str:
    assert world.proxy is not None
    n = world.proxy.reset()
    world.note(f"{n} Redis connections reset")
    return "reset redis"


async def blackhole_redis(world: World, *, for_s: float) -> str:
    assert world.proxy is not None
    world.note(f"Redis black-holed for {for_s:.1f}s")
    world.proxy.blackhole()
    try:
        await asyncio.sleep(for_s)
    finally:
        world.proxy.pass_through()
    world.note("Redis link back")
    return "blackhole redis"
