"""How many sockets each principal and each client address holds on this node (4429 caps).

One count per node, that is per cluster runtime (``caps_of``): a process runs one, tests run one
per test. A socket takes a ``Slot`` when it is admitted and gives it back on every way out
(close, refusal after the slot was taken, error, drop, cancellation).
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, eq=False)  # identity equality: two sockets of one user are two slots
class Slot:
    principal: str
    address: str
    caps: SocketCaps


class SocketCaps:
    def __init__(self) -> None:
        self._principals: Counter[str] = Counter()
        self._addresses: Counter[str] = Counter()

    def acquire(
        self, principal: str, address: str, *, max_per_principal: int, max_per_address: int
    ) -> Slot | None:
        """A slot for one more socket, or None when either cap is reached."""
        if self._principals[principal] >= max_per_principal:
            return None
        if self._addresses[address] >= max_per_address:
            return None
        self._principals[principal] += 1
        self._addresses[address] += 1
        return Slot(principal, address, self)

    def release(self, slot: Slot) -> None:
        for counter, key in ((self._principals, slot.principal), (self._addresses, slot.address)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]

    def held_by(self, principal: str) -> int:
        return self._principals[principal]

    def held_from(self, address: str) -> int:
        return self._addresses[address]


_by_node: dict[int, tuple[weakref.ref[Any], SocketCaps]] = {}


def caps_of(node: Any) -> SocketCaps:
    """The counts of one node (a cluster runtime); they go when it goes."""
    entry = _by_node.get(id(node))
    if entry is None or entry[0]() is not node:
        for key in [k for k, (ref, _) in _by_node.items() if ref() is None]:
            del _by_node[key]
        entry = (weakref.ref(node), SocketCaps())
        _by_node[id(node)] = entry
    return entry[1]


def client_address(scope: dict[str, Any]) -> str:
    """The peer address of a socket (behind a proxy: the proxy's, unless the server was told
    to trust its forwarded header, which sets ``scope["client"]``)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
