"""The cluster runtime's settings, as plain values (``rooms/`` fills them from Django)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterConfig:
    node_name: str
    lease_ttl_ms: int = 3000
    history_limit: int = 10_000
    rate_limit: tuple[int, float] = (20, 10.0)
    rate_limit_per_address: tuple[int, float] = (200, 10.0)  # the same, per client address
    send_timeout_ms: int = 5000
    room_idle_s: float = 300.0
    drain_timeout_s: float = 20.0
    max_body: int = 4000
    # A re-sent command is recognised for this long (clients resend within seconds or minutes).
    dedupe_ttl_s: int = 86_400
    # Recent messages the room server keeps in memory (edit and delete checks, hand-off state).
    state_window: int = 200
    # Replicas that must hold an append (and a lease claim) before it is acked: Redis ``WAIT``
    # right after the write, on its connection (cluster.replication). 0: no WAIT at all.
    min_replicas: int = 0

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError(f"min_replicas={self.min_replicas} must be at least 0")

    @property
    def replica_wait_ms(self) -> int:
        """How long one WAIT may block: a quarter of the command's budget, so that the router
        can try again (the dedupe makes a retry idempotent) before the client's deadline, and
        a stopped replica holds a room's queue for a moment, not for the whole budget. Capped
        at 1 s, well below the Redis client's socket timeout; a healthy replica answers in
        about one round trip."""
        return max(50, min(1000, self.send_timeout_ms // 4))

    @property
    def heartbeat_interval_s(self) -> float:
        # Three beats per TTL: one lost beat never costs a node its rooms.
        return self.lease_ttl_ms / 3000.0

    @property
    def membership_poll_s(self) -> float:
        # Departures are noticed within a fraction of the TTL, well inside "within a second".
        return min(0.25, self.lease_ttl_ms / 6000.0)
