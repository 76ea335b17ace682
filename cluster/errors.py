"""Every error the cluster raises, under one base, split by what the caller should do.

- ``CommandError``: the command itself was refused (bad input, rate limit, permission, unknown
  target). Its ``code`` is the protocol's error code. Never retried: the same command would be
  refused again, and retrying a poison command is how one frame crash-loops a room.
- ``Retryable``: the command may well succeed if tried again, at another node or a moment later
  (the room is moving, its owner died, Redis blinked). The router retries these, and only these,
  until the command's deadline, with the same ``client_id`` so the owner's dedupe keeps it safe.
- ``Fenced``: this node's lease is gone; the room server that hit it stops itself.
"""

from __future__ import annotations

from typing import Literal

from redis.exceptions import BusyLoadingError, ReadOnlyError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

ErrorCode = Literal[
    "bad_request", "too_large", "rate_limited", "forbidden", "not_found", "unavailable"
]
ERROR_CODES: tuple[ErrorCode, ...] = (
    "bad_request", "too_large", "rate_limited", "forbidden", "not_found", "unavailable",
)  # fmt: skip

# Redis failures that say nothing about the command: the connection dropped or timed out, the
# server is loading its data, or we reached a replica that was just demoted. A ResponseError
# of any other kind (a malformed stream id, a script error) is deterministic and never retried.
TRANSIENT_REDIS_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    TryAgainError,
    OSError,
)


class ClusterError(Exception):
    """Base of every error the cluster raises on purpose."""


class CommandError(ClusterError):
    """A command was refused; ``code`` is the protocol's error code."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code: ErrorCode = code
        self.detail = detail


class Fenced(ClusterError):
    """This node's lease on a room is gone: another node owns it now (or nobody does)."""

    def __init__(self, slug: str, owner: str, epoch: str | int) -> None:
        super().__init__(f"room {slug!r}: lease lost (owner now {owner or 'nobody'}@{epoch})")
        self.slug = slug
        self.owner = owner
        self.epoch = int(epoch) if str(epoch).isdecimal() else 0


class Retryable(ClusterError):
    """Worth another try, elsewhere or a moment later, with the same client_id."""


class NotOwner(Retryable):
    """A command reached a node that does not own the room (or no longer serves it)."""

    def __init__(self, slug: str, owner: str | None = None, *, handoff: bool = False) -> None:
        super().__init__(f"room {slug!r} is not owned here (owner: {owner})")
        self.slug = slug
        self.owner = owner
        # True when the room is being handed to ``owner`` right now (it may claim on request).
        self.handoff = handoff


class LeaseTaken(Retryable):
    """Another (live) node holds the room's lease."""

    def __init__(self, slug: str, owner: str, epoch: int) -> None:
        super().__init__(f"room {slug!r} is owned by {owner}@{epoch}")
        self.slug = slug
        self.owner = owner
        self.epoch = epoch


class Draining(Retryable):
    """This node is draining: it takes no new rooms."""

    def __init__(self, node: str) -> None:
        super().__init__(f"node {node} is draining")
        self.node = node


class RoomUnavailable(Retryable):
    """The room server could not finish the command (it stopped, crashed or lost Redis);
    the command may or may not have been applied, which a retry's dedupe sorts out."""

    def __init__(self, slug: str, why: str) -> None:
        super().__init__(f"room {slug!r} unavailable: {why}")
        self.slug = slug


class NodeUnreachable(Retryable):
    """Nobody listens on the node's inbox: it is gone."""


class RpcTimeout(Retryable):
    """A node did not answer in time."""


class ReplicasBehind(Retryable):
    """Fewer replicas than ``min_replicas`` confirmed a write in time (cluster.replication).

    The master has the write (an appended event may even be delivered) but a fail-over could
    still lose it, so it is not acked: the sender retries with the same client_id, and the
    dedupe answers the retry with the same seq once the replicas confirm it."""

    def __init__(self, wanted: int, confirmed: int, timeout_ms: int) -> None:
        super().__init__(
            f"{confirmed} of {wanted} replicas confirmed the write within {timeout_ms} ms"
        )
        self.wanted = wanted
        self.confirmed = confirmed


# Handled like a dropped connection wherever Redis errors are: the write may or may not be safe,
# so whoever made it re-reads before going on, and the command is retried with its client_id.
TRANSIENT_REDIS_ERRORS = (*TRANSIENT_REDIS_ERRORS, ReplicasBehind)


def is_retryable(exc: BaseException) -> bool:
    """The router's whole retry rule."""
    return isinstance(exc, (Retryable, *TRANSIENT_REDIS_ERRORS))
