"""Where a room should live: rendezvous (highest random weight) hashing over live nodes.

Every node computes the same answer from the same membership, with no coordination, and when a
node joins or leaves only the rooms that prefer it move (about 1/N of them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _weight(node: str, slug: str) -> int:
    digest = hashlib.blake2b(f"{node}\x00{slug}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def preferred_node(slug: str, nodes: Iterable[str]) -> str | None:
    """The node that should own ``slug``; None when there is no node."""
    best: str | None = None
    best_weight = -1
    for node in nodes:
        weight = _weight(node, slug)
        if weight > best_weight or (weight == best_weight and best is not None and node < best):
            best, best_weight = node, weight
    return best
