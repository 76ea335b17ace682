"""The randomized campaign, very short: it runs end to end, prints its seed, and its checker
finds nothing. Its menu is the cheaper faults (each fault also has a test of its own);
`scripts/chaos` runs them all."""

from __future__ import annotations

import pytest

from tests.chaos import campaign

pytestmark = [pytest.mark.cluster]


MENU = "kill owner,kill non-owner,drain,pause owner,redis restart (AOF),slow redis,client churn"


def test_a_short_campaign_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code = campaign.main(
        ["--duration", "8", "--seed", "3", "--nodes", "2", "--rooms", "2", "--clients", "2",
         "--fault-every", "3", "--faults", MENU]
    )  # fmt: skip
    out = capsys.readouterr().out
    print(out)
    assert "seed 3" in out
    assert "history check:" in out
    assert code == 0, out
