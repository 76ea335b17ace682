"""The one cluster runtime of this process, built from Django settings.

``runnode`` (or a test fixture) starts it in the server's event loop; views and consumers get it
with ``get_runtime()``.
"""

from __future__ import annotations

from django.conf import settings

from cluster.config import ClusterConfig
from cluster.runtime import ClusterRuntime, RuntimeHooks

from . import archive, selectors, services

_runtime: ClusterRuntime | None = None


def config_from_settings(**overrides: object) -> ClusterConfig:
    values: dict[str, object] = {
        "node_name": settings.CHAT_NODE_NAME,
        "lease_ttl_ms": settings.CHAT_LEASE_TTL_MS,
        "history_limit": settings.CHAT_HISTORY_LIMIT,
        "rate_limit": settings.CHAT_RATE_LIMIT,
        "rate_limit_per_address": settings.CHAT_RATE_LIMIT_PER_ADDRESS,
        "send_timeout_ms": settings.CHAT_SEND_TIMEOUT_MS,
        "min_replicas": settings.CHAT_REDIS_MIN_REPLICAS,
        "room_idle_s": float(settings.CHAT_ROOM_IDLE_S),
        "drain_timeout_s": float(settings.CHAT_DRAIN_TIMEOUT_S),
        "max_body": settings.CHAT_MAX_BODY,
    }
    values.update(overrides)
    return ClusterConfig(**values)  # type: ignore[arg-type]


def build_runtime(redis_url: str, **overrides: object) -> ClusterRuntime:
    hooks = RuntimeHooks(
        seq_floor=selectors.room_seq_floor,
        checkpoint=services.room_arecord_seq,
        archive=archive.cluster_hooks(),
        workers=[archive.archive_worker],
    )
    return ClusterRuntime(config_from_settings(**overrides), redis_url, hooks)


def install(runtime: ClusterRuntime | None) -> None:
    global _runtime
    _runtime = runtime


def get_runtime() -> ClusterRuntime:
    if _runtime is None:
        raise RuntimeError("the cluster runtime is not running in this process (use runnode)")
    return _runtime


def current_runtime() -> ClusterRuntime | None:
    return _runtime
