"""The evaluation harness gives the same numbers in-process and through a running server."""
from __future__ import annotations

import pytest

from metalearn.evaluate import evaluate, in_process, over_grpc, table
from metalearn_server.execution.repository import BUNDLED_REPOSITORY


@pytest.mark.parametrize("method", ["prototype", "finetune"])
def test_grpc_and_in_process_agree(server, evaluation_data, method):
    local = evaluate(in_process(BUNDLED_REPOSITORY), evaluation_data, 5, 1, method, episodes=30, seed=3)
    remote = evaluate(over_grpc(server.target), evaluation_data, 5, 1, method, episodes=30, seed=3)
    assert remote.mean == pytest.approx(local.mean, abs=1 / (30 * 75))  # at most one query in 30 episodes differs
    assert remote.ece == pytest.approx(local.ece, abs=1e-3)
    assert local.ci95 > 0 and local.episodes == 30
    assert f"| {method} |" in table([local])


def test_expected_calibration_error():
    import numpy as np

    from metalearn.evaluate import expected_calibration_error

    labels = np.array([0, 0, 0, 0])
    # Confident and right: no gap.  Confident (0.9) and right half the time: a gap of 0.4.
    assert expected_calibration_error(np.array([[1.0, 0.0]] * 4), labels) == 0
    half_right = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    assert abs(expected_calibration_error(half_right, labels) - 0.4) < 1e-9
