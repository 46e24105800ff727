"""`make bench` keeps working: a very short run produces every ratio and both reports."""
from __future__ import annotations

import json
import math
import os
import subprocess
import queue
import statistics
import threading
import time

import numpy as np
import pytest
import torch

from metalearn.backbones import Conv4, RotationEnsemble
from metalearn.benchmark import (PEER_PYTHON, ROOT, SHAPES, TARGETS, ServerProcess, TritonPeer, closed_loop,
                                 episode_arrays, main, peer_backbone, save_episode, tritonclient_load)
from metalearn_server.execution.repository import BUNDLED_REPOSITORY, ModelRepository


def test_quick_benchmark_writes_its_reports(tmp_path):
    main(["--quick", "--seconds", "0.3", "--warmup", "0.1", "--soak-requests", "50", "--out", str(tmp_path),
          "--name", "smoke", "--version", "2", "--no-triton-peer"])
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert result["model"] == "omniglot-conv4 version 2"
    assert set(result["ratios"]) == set(TARGETS) - {"metalearn_v2_p50_over_triton_c1",
                                                     "metalearn_v2_throughput_c16_over_triton",
                                                     "limit_p50_over_triton_c1"}
    assert all(math.isfinite(value) for value in result["ratios"].values())
    systems = {(cell["system"], cell["concurrency"]) for cell in result["cells"]}
    assert {("limit", 1), ("metalearn", 16), ("peer", 1)} <= systems
    assert all(cell["requests"] > 0 and cell["p50_ms"] > 0 for cell in result["cells"])
    assert "| ratio | target | measured |" in (tmp_path / "smoke.md").read_text()


@pytest.mark.parametrize("version, rotations, pooled", [("1", False, True), ("2", False, True), ("3", True, False), ("4", True, False),
                                                      ("5", True, False)])
def test_the_peer_computes_what_the_served_backbone_computes(version, rotations, pooled):
    """The eager-PyTorch peer runs the same network as the version measured (Conv-4 before configs named one)."""
    model = ModelRepository(BUNDLED_REPOSITORY, ["CPUExecutionProvider"]).get("", version)
    peer = peer_backbone(model)
    assert isinstance(peer, RotationEnsemble) == rotations
    conv4 = peer.backbone if rotations else peer
    assert isinstance(conv4, Conv4) and isinstance(conv4.encoder[-1][-1], torch.nn.MaxPool2d) == pooled


def test_closed_loop_reads_a_saturated_servers_rate_at_any_concurrency():
    """A server that answers one request at a time, first come first served, serves at the same rate whether
    1 or 16 clients wait.  The loop must read that rate from the answers inside its window: at 16 clients every
    request waits about 16 service times, which is a third of this window and must not count against it."""
    waiting: queue.Queue[threading.Event | None] = queue.Queue()
    answered: list[float] = []

    def serve() -> None:
        while (request := waiting.get()) is not None:
            time.sleep(0.01)
            answered.append(time.perf_counter())
            request.set()

    def call() -> None:
        request = threading.Event()
        waiting.put(request)
        request.wait()

    server = threading.Thread(target=serve)
    server.start()
    try:
        for concurrency in (1, 16):
            answered.clear()
            loop = closed_loop(call, concurrency, seconds=0.5, warmup=0.05)
            served = [t for t in answered if answered[0] + 0.05 <= t]
            rate = (len(served) - 1) / (served[-1] - served[0])  # the server's own count, clock to clock
            assert loop.throughput == pytest.approx(rate, rel=0.1)
            assert len(loop.latencies) >= concurrency
            assert statistics.median(loop.latencies) == pytest.approx(concurrency / rate, rel=0.25)
    finally:
        waiting.put(None)
        server.join()


def test_the_triton_peer_answers_what_metalearn_answers_through_the_same_client(tmp_path):
    """The race is fair only if both servers compute the same thing: the Triton peer's scores for the episode are
    metalearn's v2 endpoint's, both asked by the same tritonclient load; and that load measures either."""
    if not PEER_PYTHON.exists():
        pytest.skip(f"{PEER_PYTHON} is not installed (make dev installs PyTriton there where it can)")
    model = ModelRepository(BUNDLED_REPOSITORY, ["CPUExecutionProvider"]).get()
    episode = save_episode(episode_arrays(SHAPES[0]), tmp_path / "episode.npz")
    server, peer = ServerProcess([]), TritonPeer(model.directory, model.name, model.config.default_distance)
    try:
        scores = {}
        for name, target in (("metalearn", server.target), ("triton", peer.target)):
            answer = subprocess.run([str(PEER_PYTHON), "-m", "metalearn.tritonclient_load", target, model.name,
                                     str(episode), "--scores"], capture_output=True, text=True, check=True, cwd=ROOT,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)})
            scores[name] = np.array(json.loads(answer.stdout)["scores"])
            loop = tritonclient_load(target, model.name, episode, 2, 0.3, 0.1)
            assert loop.completed > 0 and loop.latencies
        assert scores["metalearn"].shape == (5, 5)
        np.testing.assert_allclose(scores["triton"], scores["metalearn"], rtol=1e-4, atol=1e-6)
    finally:
        server.stop()
        peer.stop()


def test_race_windows_pool_into_one_cell():
    from metalearn.benchmark import Loop, pooled

    loop = pooled([Loop([0.010, 0.030], 2, 1.0, 1.1), Loop([0.020], 1, 0.5, 0.6)])
    assert sorted(loop.latencies) == [0.010, 0.020, 0.030] and loop.completed == 3
    assert loop.throughput == 2.0 and abs(loop.elapsed - 1.7) < 1e-9
