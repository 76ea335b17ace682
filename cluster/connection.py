"""Redis clients from ``REDIS_URL``: plain, TLS, or through Sentinel.

    redis://[:password@]host:6379/0                     one server
    rediss://[:password@]host:6380/0?ssl_ca_certs=...   one server over TLS
    redis+sentinel://[:password@]h1:26379,h2:26379/MASTER[/DB][?sentinel_password=...]
    rediss+sentinel://...                               Sentinel and the master over TLS

With Sentinel the client asks the sentinels for the current master on every (re)connect, so a
fail-over is followed by itself; the nodes' reconnect-and-resync logic does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
CLIENT_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
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


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse a ``redis+sentinel://`` URL; raises ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a Sentinel URL (scheme {parts.scheme!r})")
    netloc = parts.netloc
    password = None
    if "@" in netloc:
        credentials, netloc = netloc.rsplit("@", 1)
        password = unquote(credentials.split(":", 1)[-1]) or None
    sentinels = []
    for item in netloc.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"sentinel address {item!r} must be host:port")
        sentinels.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("a Sentinel URL names the master: redis+sentinel://h:26379/MASTER/0")
    db = path[1] if len(path) > 1 else "0"
    if not db.isdigit() or len(path) > 2:
        raise ValueError(f"the path must be /MASTER or /MASTER/DB, not {parts.path!r}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    sentinel_password = query.pop("sentinel_password", None)
    return SentinelTarget(
        sentinels=sentinels,
        master=path[0],
        db=int(db),
        password=password,
        sentinel_password=sentinel_password,
        tls=SENTINEL_SCHEMES[parts.scheme],
        tls_options={k: v for k, v in query.items() if k.startswith("ssl_")},
    )


def _sentinel_kwargs(target: SentinelTarget) -> tuple[dict[str, Any], dict[str, Any]]:
    tls: dict[str, Any] = {"ssl": True, **target.tls_options} if target.tls else {}
    for_sentinels = {"password": target.sentinel_password, **tls, "socket_connect_timeout": 2}
    for_master = {**CLIENT_OPTIONS, "password": target.password, "db": target.db, **tls}
    return for_sentinels, for_master


def async_redis(url: str) -> redis.asyncio.Redis:
    if urlsplit(url).scheme in SENTINEL_SCHEMES:
        target = parse_sentinel_url(url)
        for_sentinels, for_master = _sentinel_kwargs(target)
        sentinel = redis.asyncio.sentinel.Sentinel(
            target.sentinels, sentinel_kwargs=for_sentinels, **for_master
        )
        return sentinel.master_for(target.master)
    return redis.asyncio.Redis.from_url(url, health_check_interval=10, **CLIENT_OPTIONS)


def sync_redis(url: str) -> redis.Redis:
    if urlsplit(url).scheme in SENTINEL_SCHEMES:
        target = parse_sentinel_url(url)
        for_sentinels, for_master = _sentinel_kwargs(target)
        sentinel = redis.sentinel.Sentinel(
            target.sentinels, sentinel_kwargs=for_sentinels, **for_master
        )
        return sentinel.master_for(target.master)
    return redis.Redis.from_url(url, **CLIENT_OPTIONS)
