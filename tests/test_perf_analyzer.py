"""Triton's perf_analyzer, unmodified, measures metalearn: it reads ServerMetadata, ModelMetadata,
ModelConfig and ModelStatistics before it sends a request, so it runs only if they are right.

A few seconds on loopback per model; it checks perf_analyzer finishes cleanly and reports
throughput and latency, and that the server-side counts it reads from ModelStatistics are the
requests it made.  The numbers themselves are left to ``make bench``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from helpers import as_tensor, labels_of

ROOT = Path(__file__).resolve().parents[1]
PERF_VENV = ROOT / ".venv-perf"
PERF_ANALYZER = PERF_VENV / "bin" / "perf_analyzer"
MODEL = "omniglot-conv4"


def perf_analyzer_env() -> dict[str, str]:
    """The environment perf_analyzer starts in (libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel), or a skip
    saying what is missing."""
    if not PERF_ANALYZER.exists():
        pytest.skip(f"{PERF_ANALYZER} is not installed (make dev installs tritonclient 2.38.0, which bundles it, "
                    "where its wheel exists)")
    cudart = sorted(PERF_VENV.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib"))
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join([*map(str, cudart), os.environ.get("LD_LIBRARY_PATH", "")])}
    probe = subprocess.run([str(PERF_ANALYZER), "--version"], capture_output=True, text=True, env=env, timeout=30)
    if "error while loading shared libraries" in probe.stderr:
        reason = probe.stderr.strip().splitlines()[-1]
        if os.environ.get("CI"):
            pytest.fail(f"perf_analyzer cannot start ({reason}); `make test` installs libb64-0d as root")
        pytest.skip(f"perf_analyzer cannot start: {reason} (as root, make system-tools installs libb64-0d)")
    return env


def run(server, model: str, *data: str) -> str:
    result = subprocess.run(
        [str(PERF_ANALYZER), "-m", model, "-i", "grpc", "-u", server.target, "--concurrency-range", "1",
         "-p", "500", "--max-trials", "10", "-s", "100", *data],
        capture_output=True, text=True, env=perf_analyzer_env(), timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not re.search(r"error|failed", output, re.IGNORECASE), output
    return output


def figure(output: str, pattern: str) -> float:
    match = re.search(pattern, output)
    assert match, f"{pattern!r} not in perf_analyzer's report:\n{output}"
    return float(match.group(1))


def check_report(output: str) -> None:
    assert figure(output, r"Throughput: ([0-9.]+) infer/sec") > 0
    assert figure(output, r"p50 latency: ([0-9]+) usec") > 0
    # The server side comes from ModelStatistics, read before and after the measurement.
    requests = figure(output, r"Request count: ([0-9]+)")
    assert abs(figure(output, r"Successful request count: ([0-9]+)") - requests) <= 1
    assert figure(output, r"compute infer ([0-9]+) usec") > 0


def test_perf_analyzer_measures_the_backbone(server):
    check_report(run(server, MODEL + ".embed", "--shape", "ITEMS:10,1,28,28", "--input-data", "zero"))


def test_perf_analyzer_measures_the_few_shot_model_on_a_real_episode(server, episode, tmp_path):
    support, queries = as_tensor(episode.support), as_tensor(episode.query)
    labels = labels_of(episode, episode.support_labels)
    data = tmp_path / "episode.json"  # perf_analyzer's --input-data format: each input's flat content and shape
    data.write_text(json.dumps({"data": [{
        "SUPPORT": {"content": support.ravel().tolist(), "shape": list(support.shape)},
        "SUPPORT_LABELS": {"content": labels, "shape": [len(labels)]},
        "QUERY": {"content": queries.ravel().tolist(), "shape": list(queries.shape)}}]}))
    check_report(run(server, MODEL, "--input-data", str(data)))
