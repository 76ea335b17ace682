"""Synchronous Redis reads and writes for Django code that runs outside the event loop
(the admin, management commands, services called from sync views).

Works on one Redis, Sentinel and a Redis Cluster alike: every multi-key step touches one room's
keys only (one hash tag, so one slot), and a pattern scan runs on every master of a cluster
(``_scan_room``); nothing here assumes one keyspace or a DB number.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import lru_cache

import redis
import redis.cluster
from django.conf import settings

from cluster import keys
from cluster.connection import sync_redis
from cluster.fanout import SEP
from cluster.keys import RoomKeys


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis | redis.cluster.RedisCluster:
    return sync_redis(url)


def client() -> redis.Redis | redis.cluster.RedisCluster:
    if not settings.CHAT_REDIS_URL:
        raise RuntimeError("no Redis configured (REDIS_URL is empty and no node started one)")
    return _client(settings.CHAT_REDIS_URL)


@dataclass(frozen=True)
class RoomStats:
    online: list[str]
    messages: int
    owner: str | None
    last_seq: int


def live_nodes(r: redis.Redis | redis.cluster.RedisCluster | None = None) -> set[str]:
    r = r or client()
    secs, micros = r.time()
    now = int(secs) * 1000 + int(micros) // 1000
    return set(r.zrangebyscore(keys.NODES, now - settings.CHAT_LEASE_TTL_MS, "+inf"))


def room_stats(slugs: list[str]) -> dict[str, RoomStats]:
    """People online, events kept and owner of each room, in two round trips in all."""
    if not slugs:
        return {}
    r = client()
    live = live_nodes(r)
    pipe = r.pipeline(transaction=False)
    for slug in slugs:
        k = RoomKeys(slug)
        pipe.hgetall(k.presence)
        pipe.xlen(k.log)
        pipe.hget(k.lease, "node")
        pipe.get(k.seq)
    rows = pipe.execute()
    stats: dict[str, RoomStats] = {}
    for i, slug in enumerate(slugs):
        presence, length, owner, seq = rows[4 * i : 4 * i + 4]
        online = sorted(
            {
                key.partition(SEP)[2]
                for key, count in presence.items()
                if int(count) > 0 and key.partition(SEP)[0] in live
            }
        )
        stats[slug] = RoomStats(
            online, int(length), owner if owner in live else None, int(seq or 0)
        )
    return stats


def room_close(slug: str) -> None:
    client().set(RoomKeys(slug).closed, str(int(time.time())))


def room_reopen(slug: str) -> None:
    client().delete(RoomKeys(slug).closed)


def room_purge(slug: str) -> int:
    """Drop the room's log and state; return the seq high-water (kept, so seqs never repeat).

    The lease goes in the same step: the owner's next append or snapshot is fenced, so the
    window of messages it holds in memory is never written back nor edited; the next owner
    (a new epoch: the epoch counter stays) starts from the empty log. (One MULTI on one slot:
    every key is the room's, so a Redis Cluster runs it too.)
    """
    k = RoomKeys(slug)
    pipe = client().pipeline(transaction=True)
    pipe.get(k.seq)
    pipe.hget(k.lease, "node")
    # DEL by name: redis-py's cluster pipelines refuse ``delete`` of several keys, even of one
    # slot's.
    pipe.execute_command("DEL", k.log, k.state, k.deleted, k.lease)
    seq, owner, _ = pipe.execute()
    if owner:
        _announce_released(slug, owner)
    return int(seq or 0)


def room_high_water(slug: str) -> int:
    """The highest seq Redis knows the room issued or reserved."""
    k = RoomKeys(slug)
    pipe = client().pipeline(transaction=False)
    pipe.get(k.seq)
    pipe.get(k.reserved)
    pipe.xrevrange(k.log, count=1)
    seq, reserved, last = pipe.execute()
    from_log = int(str(last[0][0]).split("-", 1)[0]) if last else 0
    return max(int(seq or 0), int(reserved or 0), from_log)


def room_forget(slug: str) -> None:
    """A deleted room: every key of it goes but the epoch counter (fencing epochs only grow),
    and the room is marked closed so a still-running owner refuses appends until the slug is
    created again (``room_reopen``)."""
    r = client()
    k = RoomKeys(slug)
    owner = r.hget(k.lease, "node")
    doomed = [k.log, k.seq, k.reserved, k.lease, k.presence, k.state, k.deleted, names_key(slug)]
    doomed += _scan_room(r, k, f"{k.tag}:dedupe:*")
    pipe = r.pipeline(transaction=False)
    pipe.execute_command("DEL", *doomed)  # one slot's keys (see room_purge)
    pipe.set(k.closed, str(int(time.time())))
    pipe.execute()
    if owner:
        _announce_released(slug, owner)


def _scan_room(r: redis.Redis | redis.cluster.RedisCluster, k: RoomKeys, pattern: str) -> list[str]:
    """Keys of one room matching ``pattern``. On a Redis Cluster redis-py's ``scan_iter`` runs
    SCAN on every master to its end: the room's slot lives on one of them, or on two while it
    is being migrated (a rare admin step: the cost of asking every master does not matter)."""
    return [str(key) for key in r.scan_iter(match=pattern, count=1000)]


def names_key(slug: str) -> str:
    """Hash: display name -> the holder of that name among the room's guests."""
    return f"{RoomKeys(slug).tag}:names"


def _announce_released(slug: str, owner: str) -> None:
    # Nodes drop their cached owner of the room (as after a release), so the next command
    # looks the lease up again instead of going to a fenced server.
    payload = {"op": "released", "room": slug, "node": owner, "epoch": 0}
    client().publish(keys.CLUSTER_CHANNEL, json.dumps(payload))


def room_move(slug: str, to: str | None = None) -> int:
    """Ask the room's owner to hand it off (to ``to``, or its next preferred node).
    Returns how many nodes heard the request (on a Redis Cluster: how many of those connected
    to the node that took the PUBLISH; the cluster passes it on to the others)."""
    payload = json.dumps({"op": "move", "room": slug, "to": to})
    return int(client().publish(keys.CLUSTER_CHANNEL, payload))
