from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nodes import Cluster


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """Nodes on the session Redis (emptied); every node is ended after the test."""
    c = Cluster(redis_url, tmp_path, CHAT_LEASE_TTL_MS="1500")
    try:
        yield c
    finally:
        c.close()
