"""Redis clients from ``REDIS_URL``: plain, TLS, through Sentinel, or a Redis Cluster.

    redis://[[user]:password@]host:6379/0                one server
    rediss://[[user]:password@]host:6380/0?ssl_ca_certs=...   one server over TLS
    redis+sentinel://[[user]:password@]h1:26379,h2:26379/MASTER[/DB]
        [?sentinel_password=...&sentinel_username=...]   the master that the sentinels name
    rediss+sentinel://...                                Sentinel and the master over TLS
    redis+cluster://[[user]:password@]h1:7000,h2:7001[/]  a Redis Cluster (any reachable nodes;
                                                         the client learns the rest)
    rediss+cluster://...?ssl_ca_certs=...                a Redis Cluster over TLS

``user`` and ``password`` are the ACL user's (``default`` when no user is named). With Sentinel
the client asks the sentinels for the current master on every (re)connect, so a fail-over is
followed by itself; the nodes' reconnect-and-resync logic does the rest. A Redis Cluster client
follows MOVED/ASK redirections and shard fail-overs itself; it has only database 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
CLIENT_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
}
# TLS options a cluster URL may carry, each with how its text becomes the client's argument.
_TLS_OPTIONS: dict[str, Callable[[str], Any]] = {
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_cert_reqs": str,  # none | optional | required
    "ssl_check_hostname": lambda text: _flag("ssl_check_hostname", text),
}


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: list[tuple[str, int]]
    master: str
    db: int = 0
    password: str | None = None
    sentinel_password: str | None = None
    tls: bool = False
    tls_options: dict[str, str] = field(default_factory=dict)
    username: str | None = None  # the ACL user of the master (None: "default")
    sentinel_username: str | None = None


@dataclass(frozen=True)
class ClusterTarget:
    nodes: list[tuple[str, int]]  # startup nodes: any reachable one reveals the whole cluster
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_options: dict[str, Any] = field(default_factory=dict)


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def _credentials(netloc: str) -> tuple[str | None, str | None, str]:
    """``(user, password, hosts)`` of ``[[user]:password@]hosts`` (percent-decoded)."""
    if "@" not in netloc:
        return None, None, netloc
    credentials, hosts = netloc.rsplit("@", 1)
    user, colon, password = credentials.partition(":")
    if not colon:  # "user@host": a user and no password
        return unquote(user) or None, None, hosts
    return unquote(user) or None, unquote(password) or None, hosts


def _addresses(hosts: str, what: str) -> list[tuple[str, int]]:
    if not hosts.strip():
        raise ValueError(f"a {what} URL names at least one host:port")
    addresses = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{what} address {item!r} must be host:port")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def _flag(name: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={text!r} must be true or false")


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse a ``redis+sentinel://`` URL; raises ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a Sentinel URL (scheme {parts.scheme!r})")
    username, password, hosts = _credentials(parts.netloc)
    sentinels = _addresses(hosts, "sentinel")
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("a Sentinel URL names the master: redis+sentinel://h:26379/MASTER/0")
    db = path[1] if len(path) > 1 else "0"
    if not db.isdigit() or len(path) > 2:
        raise ValueError(f"the path must be /MASTER or /MASTER/DB, not {parts.path!r}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    sentinel_password = query.pop("sentinel_password", None)
    sentinel_username = query.pop("sentinel_username", None)
    return SentinelTarget(
        sentinels=sentinels,
        master=path[0],
        db=int(db),
        password=password,
        sentinel_password=sentinel_password,
        tls=SENTINEL_SCHEMES[parts.scheme],
        tls_options={k: v for k, v in query.items() if k.startswith("ssl_")},
        username=username,
        sentinel_username=sentinel_username,
    )


def parse_cluster_url(url: str) -> ClusterTarget:
    """Parse a ``redis+cluster://`` URL; raises ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL (scheme {parts.scheme!r})")
    if parts.fragment:
        raise ValueError(f"a Redis Cluster URL has no fragment (#{parts.fragment})")
    username, password, hosts = _credentials(parts.netloc)
    nodes = _addresses(hosts, "Redis Cluster node")
    if parts.path not in ("", "/", "/0"):
        raise ValueError(
            f"a Redis Cluster has only database 0: the path must be empty or '/', "
            f"not {parts.path!r}"
        )
    tls = CLUSTER_SCHEMES[parts.scheme]
    tls_options: dict[str, Any] = {}
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        convert = _TLS_OPTIONS.get(name)
        if convert is None:
            known = ", ".join(sorted(_TLS_OPTIONS))
            raise ValueError(f"unknown Redis Cluster URL option {name!r} (known: {known})")
        if not tls:
            raise ValueError(f"{name} needs TLS: use rediss+cluster://")
        tls_options[name] = convert(values[-1])
    return ClusterTarget(
        nodes=nodes, username=username, password=password, tls=tls, tls_options=tls_options
    )


def _sentinel_kwargs(target: SentinelTarget) -> tuple[dict[str, Any], dict[str, Any]]:
    tls: dict[str, Any] = {"ssl": True, **target.tls_options} if target.tls else {}
    for_sentinels = {
        "username": target.sentinel_username,
        "password": target.sentinel_password,
        **tls,
        "socket_connect_timeout": 2,
    }
    for_master = {
        **CLIENT_OPTIONS,
        "username": target.username,
        "password": target.password,
        "db": target.db,
        **tls,
    }
    return for_sentinels, for_master


def _cluster_kwargs(target: ClusterTarget) -> dict[str, Any]:
    tls: dict[str, Any] = {"ssl": True, **target.tls_options} if target.tls else {}
    return {
        **CLIENT_OPTIONS,
        "username": target.username,
        "password": target.password,
        **tls,
    }


class ChatRedisCluster(redis.asyncio.cluster.RedisCluster):  # type: ignore[misc]
    """redis-py's async RedisCluster, with a SCRIPT LOAD that reaches every node a command may
    be sent to.

    A script call (``Script.__call__``) that meets NOSCRIPT loads the script with
    ``script_load`` (on the nodes redis-py lists as primaries) and calls it once more. After a
    fail-over, concurrent MOVED answers can leave redis-py routing a slot to its new master
    while listing that master as a replica (``NodesManager._update_moved_slots`` run twice for
    one move): the load never reaches it, and every call of the script on that slot fails
    with NOSCRIPT until the client re-reads the cluster. So the load goes to the primaries and
    to every node the slot map routes to.
    """

    async def script_load(self, script: Any) -> str:
        routed = {nodes[0].name: nodes[0] for nodes in self.nodes_manager.slots_cache.values()}
        targets = {node.name: node for node in self.get_primaries()} | routed
        results = await asyncio.gather(
            *(
                self.execute_command("SCRIPT LOAD", script, target_nodes=node)
                for node in targets.values()
            ),
            return_exceptions=True,
        )
        loaded = [str(r) for r in results if isinstance(r, (str, bytes))]
        if not loaded:
            errors = [r for r in results if isinstance(r, BaseException)]
            raise errors[0] if errors else redis.RedisError("SCRIPT LOAD reached no node")
        return loaded[0]


def async_redis(url: str) -> redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster:
    """The client for ``url``: a ``RedisCluster`` for cluster URLs, else a ``Redis``."""
    scheme = urlsplit(url).scheme
    if scheme in CLUSTER_SCHEMES:
        target = parse_cluster_url(url)
        startup = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in target.nodes]
        return ChatRedisCluster(
            startup_nodes=startup, health_check_interval=10, **_cluster_kwargs(target)
        )
    if scheme in SENTINEL_SCHEMES:
        target_s = parse_sentinel_url(url)
        for_sentinels, for_master = _sentinel_kwargs(target_s)
        sentinel = redis.asyncio.sentinel.Sentinel(
            target_s.sentinels, sentinel_kwargs=for_sentinels, **for_master
        )
        return sentinel.master_for(target_s.master)
    return redis.asyncio.Redis.from_url(url, health_check_interval=10, **CLIENT_OPTIONS)


def sync_redis(url: str) -> redis.Redis | redis.cluster.RedisCluster:
    """The blocking client for ``url`` (management commands, the admin)."""
    scheme = urlsplit(url).scheme
    if scheme in CLUSTER_SCHEMES:
        target = parse_cluster_url(url)
        startup = [redis.cluster.ClusterNode(host, port) for host, port in target.nodes]
        return redis.cluster.RedisCluster(startup_nodes=startup, **_cluster_kwargs(target))
    if scheme in SENTINEL_SCHEMES:
        target_s = parse_sentinel_url(url)
        for_sentinels, for_master = _sentinel_kwargs(target_s)
        sentinel = redis.sentinel.Sentinel(
            target_s.sentinels, sentinel_kwargs=for_sentinels, **for_master
        )
        return sentinel.master_for(target_s.master)
    return redis.Redis.from_url(url, **CLIENT_OPTIONS)
