"""The plain-data histogram the metrics export (cluster/stats.py)."""

from __future__ import annotations

import math

import pytest

from cluster.stats import KNOWN_CLOSE_CODES, Histogram, NodeStats


def test_a_value_on_a_bound_counts_in_that_bucket_as_prometheus_le_does() -> None:
    h = Histogram((0.1, 1.0))
    for value in (0.0, 0.1, 0.5, 1.0, 1.5, 100.0):
        h.observe(value)
    assert h.cumulative() == [(0.1, 2), (1.0, 4), (math.inf, 6)]
    assert h.count == 6
    assert h.sum == pytest.approx(103.1)


def test_an_empty_histogram_exports_zeros() -> None:
    assert Histogram((1.0,)).cumulative() == [(1.0, 0), (math.inf, 0)]


@pytest.mark.parametrize("bounds", [(), (1.0, 0.5), (1.0, 1.0)])
def test_bounds_must_increase(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="increasing"):
        Histogram(bounds)


def test_unusual_close_codes_share_one_label() -> None:
    stats = NodeStats()
    for code in (1000, 1013, 4999, 3000, 1000):
        stats.count_close(code)
    assert stats.socket_closes == {"1000": 2, "1013": 1, "other": 2}
    assert 1012 in KNOWN_CLOSE_CODES
