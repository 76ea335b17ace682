"""Every Redis key and pub/sub channel name, in one place.

All keys of one room share the hash tag ``{room:SLUG}`` so that a room never spans Redis Cluster
shards and its Lua scripts touch a single slot; the room's channel carries the tag too, so on a
Redis Cluster >= 7 its events go out by sharded pub/sub (SPUBLISH) from inside the append script.
Node keys carry their own tag ``{node:NAME}``. The cluster-wide membership keys (``NODES``,
``NODE_INFO``) need no common tag: no script touches them together, each command names one of
them, and they are off the message path (heartbeats and polls only). Their names stay as they
were, so that old and new nodes see each other during a rolling upgrade.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "chat"


@dataclass(frozen=True)
class RoomKeys:
    slug: str

    @property
    def tag(self) -> str:
        return f"{PREFIX}:{{room:{self.slug}}}"

    @property
    def log(self) -> str:
        """Stream of durable events; entry id ``SEQ-0`` so a seq range is an id range."""
        return f"{self.tag}:log"

    @property
    def seq(self) -> str:
        """Highest seq ever assigned (only grows)."""
        return f"{self.tag}:seq"

    @property
    def reserved(self) -> str:
        """Highest seq reservation an append in Redis was issued under (see seq_recovery)."""
        return f"{self.tag}:reserved"

    @property
    def lease(self) -> str:
        """Hash {node, epoch}: the room's current owner."""
        return f"{self.tag}:lease"

    @property
    def epoch(self) -> str:
        """Highest fencing epoch ever granted (survives release, only grows)."""
        return f"{self.tag}:epoch"

    def dedupe(self, user: str, client_id: str) -> str:
        """``seq id`` of an applied command, kept for a day for idempotent re-sends."""
        return f"{self.tag}:dedupe:{len(user)}:{user}:{client_id}"

    @property
    def presence(self) -> str:
        """Hash ``presence_field(node, user)`` -> that user's sockets on that node (> 0)."""
        return f"{self.tag}:presence"

    @property
    def state(self) -> str:
        """Stream of CRDT deltas and snapshots of the room server's state."""
        return f"{self.tag}:state"

    @property
    def closed(self) -> str:
        """Present while the room is archived; every append checks it."""
        return f"{self.tag}:closed"

    @property
    def channel(self) -> str:
        """Pub/sub channel: durable events (``E``) and ephemeral ones (``T``/``P``)."""
        return f"{self.tag}:events"

    @property
    def deleted(self) -> str:
        """Sorted set: ids of deleted messages, scored by their seq (trimmed with the log)."""
        return f"{self.tag}:deleted"


def node_key(name: str) -> str:
    """String key holding the node's session token, with a TTL: the node's liveness."""
    return f"{PREFIX}:{{node:{name}}}:alive"


def node_rooms_key(name: str) -> str:
    """Set of rooms the node owns (an index for fast take-over, not the truth)."""
    return f"{PREFIX}:{{node:{name}}}:rooms"


def node_presence_key(name: str) -> str:
    """Set of rooms where the node has written presence (cleared when it starts again)."""
    return f"{PREFIX}:{{node:{name}}}:presence"


# A presence field is ``node SEP user``: node names never hold the separator (a control
# character), user names may, so a field splits at its first separator.
PRESENCE_SEP = "\x1f"


def presence_field(node: str, user: str) -> str:
    """The field of a room's presence hash that holds ``user``'s sockets on ``node``."""
    return f"{node}{PRESENCE_SEP}{user}"


def parse_presence_field(field: str) -> tuple[str, str] | None:
    """``(node, user)`` of a presence field, or None for a field no node writes."""
    node, sep, user = field.partition(PRESENCE_SEP)
    return (node, user) if sep and node else None


def node_rpc_channel(name: str) -> str:
    """A node's RPC inbox: sharded pub/sub on a Redis Cluster 7+ (its tag picks the shard),
    classic elsewhere (cluster/rpc.py)."""
    return f"{PREFIX}:{{node:{name}}}:rpc"


NODES = f"{PREFIX}:nodes"  # zset name -> last heartbeat (Redis time, ms)
NODE_INFO = f"{PREFIX}:nodeinfo"  # hash name -> JSON {state, rooms, connections}
# Membership and hand-off announcements. Classic pub/sub, also on a Redis Cluster: every node
# must hear them, and a cluster broadcasts a classic PUBLISH over its bus to every shard.
CLUSTER_CHANNEL = f"{PREFIX}:cluster"
