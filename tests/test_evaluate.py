"""The evaluation harness gives the same numbers in-process and through a running server."""
from __future__ import annotations

import pytest

from metalearn.evaluate import evaluate, evaluate_open_set, in_process, open_set_table, over_grpc, table
from metalearn_server.execution.repository import BUNDLED_REPOSITORY


@pytest.mark.parametrize("method", ["prototype", "finetune", "transductive"])
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


def test_open_set_evaluation_agrees_and_separates(server, evaluation_data):
    local_backend, remote_backend = in_process(BUNDLED_REPOSITORY), over_grpc(server.target)
    assert local_backend.rejection_threshold == pytest.approx(remote_backend.rejection_threshold)
    local = evaluate_open_set(local_backend, evaluation_data, 5, 1, episodes=20, seed=5)
    remote = evaluate_open_set(remote_backend, evaluation_data, 5, 1, episodes=20, seed=5)
    assert remote.auroc == pytest.approx(local.auroc, abs=1e-3)
    assert remote.known_accuracy == pytest.approx(local.known_accuracy, abs=1e-3)
    # Queries from outside the episode score lower than known ones far more often than not.
    assert local.auroc > 0.8
    assert "| 5-way 1-shot |" in open_set_table([local])


def test_auroc():
    import numpy as np

    from metalearn.evaluate import auroc

    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auroc(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 0.5
    assert auroc(np.array([2.0]), np.array([2.0])) == 0.5  # ties count half


def test_step_sweep_spans_chunks_and_agrees_with_evaluate(evaluation_data, monkeypatch):
    import metalearn.evaluate as harness

    monkeypatch.setattr(harness, "SWEEP_CHUNK", 2)  # 5 episodes: chunks of 2, 2 and 1
    rows = harness.sweep_adaptation_steps(BUNDLED_REPOSITORY, evaluation_data, [0, 2], episodes=5, seed=4).splitlines()
    assert len(rows) == 4 and rows[2].startswith("| 0 |") and rows[3].startswith("| 2 |")
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]
    # K = 0 is the prototype head for both methods: the same accuracy in both column groups ...
    assert cells[0][1:3] == cells[0][4:6]
    # ... and the same as the harness's own prototype evaluation of those episodes.
    prototype = evaluate(in_process(BUNDLED_REPOSITORY), evaluation_data, 5, 1, "prototype", episodes=5, seed=4)
    assert cells[0][1] == f"{100 * prototype.mean:.2f} ± {100 * prototype.ci95:.2f}"
    assert all(cell.endswith(" ms") for row in cells for cell in (row[3], row[6]))
