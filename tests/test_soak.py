"""`make soak` keeps working: a short soak with every RPC in the mix passes its own verdict."""
from __future__ import annotations

from collections import Counter

from metalearn.soak import Window, main, verdict


def test_short_soak_passes(tmp_path):
    out = tmp_path / "soak.md"
    main(["--minutes", "0.1", "--concurrency", "8", "--window-seconds", "3", "--out", str(out)])
    text = out.read_text()
    assert "Verdict: PASS" in text and "| 1 |" in text


def test_verdict_catches_errors_growth_and_drift():
    steady = Window(3, 300, 5.0, 20.0, 200.0, 0)
    assert verdict([steady, steady], Counter()) == []
    failures = verdict([steady, Window(3, 300, 5.0, 50.0, 260.0, 1)], Counter({"StatusCode.INTERNAL": 1}))
    assert len(failures) == 3
    # With three windows or more the first is the warm-up: growth is measured from the second.
    warming = Window(3, 300, 5.0, 20.0, 150.0, 0)
    assert verdict([warming, steady, Window(3, 300, 5.0, 20.0, 215.0, 0)], Counter()) == []
    assert verdict([warming, steady, Window(3, 300, 5.0, 20.0, 225.0, 0)], Counter())
