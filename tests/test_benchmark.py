"""`make bench` keeps working: a very short run produces every ratio and both reports."""
from __future__ import annotations

import json
import math

from metalearn.benchmark import TARGETS, main


def test_quick_benchmark_writes_its_reports(tmp_path):
    main(["--quick", "--seconds", "0.3", "--warmup", "0.1", "--soak-requests", "50", "--out", str(tmp_path),
          "--name", "smoke"])
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert set(result["ratios"]) == set(TARGETS)
    assert all(math.isfinite(value) for value in result["ratios"].values())
    systems = {(cell["system"], cell["concurrency"]) for cell in result["cells"]}
    assert {("limit", 1), ("metalearn", 16), ("peer", 1)} <= systems
    assert all(cell["requests"] > 0 and cell["p50_ms"] > 0 for cell in result["cells"])
    assert "| ratio | target | measured |" in (tmp_path / "smoke.md").read_text()
