"""The randomized campaign, very short: it runs end to end, prints its seed, and its checker
finds nothing."""

from __future__ import annotations

import pytest

from tests.chaos import campaign

pytestmark = [pytest.mark.cluster]


@pytest.mark.xfail(
    strict=False,
    reason="issue 8 holes 5, 6, 9, 11: seq skips on take-over, presence after a false death, "
    "late answers while Redis is unreachable, seqs reused after Redis loses everything",
)
def test_a_short_campaign_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code = campaign.main(
        ["--duration", "12", "--seed", "3", "--nodes", "2", "--rooms", "2", "--clients", "2",
         "--fault-every", "3"]
    )  # fmt: skip
    out = capsys.readouterr().out
    print(out)
    assert "seed 3" in out
    assert "history check:" in out
    assert code == 0, out
