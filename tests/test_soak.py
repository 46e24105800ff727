"""`make soak` keeps working: a short soak with every RPC in the mix and a hostile phase passes its own verdict."""
from __future__ import annotations

from collections import Counter

from metalearn.soak import RETURN_SLACK_MB, RSS_BUDGET_MB, Window, report, soak, verdict


def test_short_soak_meets_every_outcome_and_the_memory_budget(tmp_path):
    """The whole mix and the hostile traffic run; outcomes and RSS are checked here, latency only by `make soak`
    (timings on a shared machine are no unit test's business)."""
    out = tmp_path / "soak.md"
    windows, unexpected, hostile, idle_mb = soak(minutes=0.2, concurrency=8, window_seconds=3)
    assert not unexpected, unexpected
    assert [w.hostile for w in windows][:2] == [False, False] and windows[-1].hostile
    assert max(w.rss_mb for w in windows) <= RSS_BUDGET_MB and idle_mb <= RSS_BUDGET_MB
    assert hostile["broken version deployed"] >= 1 and any(what.startswith("flood") for what in hostile)
    text = report(windows, unexpected, hostile, idle_mb, 8)
    assert "| 1 | quiet |" in text and "| hostile |" in text and "Verdict:" in text


def test_verdict_catches_errors_growth_and_drift():
    steady = Window(3, 300, 5.0, 20.0, 200.0, 0)
    assert verdict([steady, steady], Counter()) == []
    failures = verdict([steady, Window(3, 300, 5.0, 50.0, 260.0, 1)], Counter({"StatusCode.INTERNAL": 1}))
    assert len(failures) == 3
    # With three windows or more the first is the warm-up: growth is measured from the second.
    warming = Window(3, 300, 5.0, 20.0, 150.0, 0)
    assert verdict([warming, steady, Window(3, 300, 5.0, 20.0, 215.0, 0)], Counter()) == []
    assert verdict([warming, steady, Window(3, 300, 5.0, 20.0, 225.0, 0)], Counter())


def test_verdict_holds_the_hostile_phase_to_the_budget_and_the_quiet_p99():
    quiet = Window(3, 300, 5.0, 20.0, 200.0, 0)
    assert verdict([quiet, Window(3, 250, 6.0, 39.0, 400.0, 0, hostile=True)], Counter()) == []
    slow = verdict([quiet, Window(3, 250, 6.0, 41.0, 400.0, 0, hostile=True)], Counter())
    assert len(slow) == 1 and "2× the quiet" in slow[0]
    over = verdict([quiet, Window(3, 250, 6.0, 30.0, RSS_BUDGET_MB + 1, 0, hostile=True)], Counter())
    assert len(over) == 1 and "budget" in over[0]
    loaded = Window(3, 250, 6.0, 30.0, 900.0, 0, hostile=True)  # maximal requests in flight: not growth
    assert verdict([quiet, loaded], Counter(), idle_mb=200 + RETURN_SLACK_MB) == []
    kept = verdict([quiet, loaded], Counter(), idle_mb=201 + RETURN_SLACK_MB)
    assert len(kept) == 1 and "stayed at" in kept[0]
