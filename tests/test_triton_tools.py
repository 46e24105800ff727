"""Triton's own tools against metalearn: the calls they make before and after inferring (model
configuration, repository index, inference statistics, server metadata), with the unmodified
``tritonclient[grpc]`` from PyPI over real gRPC, and the wire contract they rely on."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from helpers import as_tensor, labels_of, start_server, stop_server
from metalearn.episodes import EpisodeSampler
from metalearn.kserve.v2 import grpc_service_pb2 as pb
from metalearn.kserve.v2 import grpc_service_pb2_grpc
from metalearn_server.execution.repository import BUNDLED_REPOSITORY

ROOT = Path(__file__).resolve().parents[1]
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
CLIENTS = ROOT / "tests" / "clients"
MODEL = "omniglot-conv4"
CALLS = 3


def require_tritonclient() -> None:
    if not TRITON_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(".venv-triton is missing; `make test` installs tritonclient[grpc] there")
        pytest.skip("tritonclient venv not installed (make dev)")


def save_episode(episode, path: Path) -> Path:
    np.savez(path, support=as_tensor(episode.support), labels=np.array(labels_of(episode, episode.support_labels)),
             queries=as_tensor(episode.query))
    return path


def run_tools(target: str, episode_path: Path, mode: str) -> dict:
    result = subprocess.run([str(TRITON_PYTHON), str(CLIENTS / "tritonclient_tools.py"), target, MODEL,
                             str(episode_path), mode], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def tools(tmp_path_factory, evaluation_data):
    """A server on a repository of one good version and one broken one, and what tritonclient saw of it."""
    require_tritonclient()
    tmp = tmp_path_factory.mktemp("triton-tools")
    bundled = max((BUNDLED_REPOSITORY / MODEL).iterdir(), key=lambda p: int(p.name))
    shutil.copytree(bundled, tmp / "repository" / MODEL / "1")
    broken = tmp / "repository" / MODEL / "2"
    shutil.copytree(bundled, broken)
    (broken / "config.json").write_text("{")
    server = start_server(tmp, "--model-repository", str(tmp / "repository"))
    try:
        episode = EpisodeSampler(evaluation_data, ways=5, shots=1, queries=2, seed=3).sample()
        yield run_tools(server.target, save_episode(episode, tmp / "episode.npz"), str(CALLS)), server
    finally:
        stop_server(server)


def test_server_metadata_lists_the_extensions_served(tools):
    answer, _ = tools
    assert answer["server"]["name"] == "metalearn"
    assert sorted(answer["server"]["extensions"]) == ["model_configuration", "parameters", "statistics"]


def _io(tensors: list[dict], shape_key: str) -> list[tuple[str, str, list[str]]]:
    return [(t["name"], t["data_type" if shape_key == "dims" else "datatype"], t[shape_key]) for t in tensors]


def test_model_config_matches_the_metadata(tools):
    answer, _ = tools
    for config, metadata in ((answer["config"]["config"], answer["metadata"]),
                             (answer["embed_config"]["config"], answer["embed_metadata"])):
        assert config["name"] == metadata["name"] and config["platform"] == metadata["platform"]
        assert config.get("max_batch_size", 0) == 0  # one request is one inference: no batching across requests
        assert "all" in config["version_policy"]
        as_type = {"FP32": "TYPE_FP32", "BYTES": "TYPE_STRING"}
        for ours, theirs in ((config["input"], metadata["inputs"]), (config["output"], metadata["outputs"])):
            assert [(n, d, s) for n, d, s in _io(ours, "dims")] == [
                (n, as_type[d], s) for n, d, s in _io(theirs, "shape")]
    config = answer["config"]["config"]
    assert [i["dims"] for i in config["input"]] == [["-1", "1", "28", "28"], ["-1"], ["-1", "1", "28", "28"]]
    assert config["platform"] == "metalearn_fewshot"
    embed = answer["embed_config"]["config"]
    assert embed["platform"] == "onnxruntime_onnx" and embed["backend"] == "onnxruntime"
    assert embed["output"][0]["dims"][0] == "-1" and int(embed["output"][0]["dims"][1]) > 0


def test_repository_index_shows_the_refused_version_with_its_reason(tools):
    answer, _ = tools
    index = {(m["name"], m["version"]): m for m in answer["index"]["models"]}
    assert set(index) == {(MODEL, "1"), (MODEL, "2"), (MODEL + ".embed", "1"), (MODEL + ".embed", "2")}
    for name in (MODEL, MODEL + ".embed"):
        assert index[(name, "1")]["state"] == "READY" and not index[(name, "1")].get("reason")
        assert index[(name, "2")]["state"] == "UNAVAILABLE"
        assert "not valid JSON" in index[(name, "2")]["reason"]


def _stats(answer: dict) -> dict:
    (entry,) = answer["model_stats"]
    return entry


def test_statistics_count_the_real_calls(tools):
    answer, server = tools
    before, after = _stats(answer["statistics_before"]), _stats(answer["statistics"])
    assert before["version"] == after["version"] == "1"
    assert int(before.get("inference_count", 0)) == 0
    assert int(after["inference_count"]) == CALLS
    stats = after["inference_stats"]
    assert int(stats["success"]["count"]) == CALLS and int(stats["fail"]["count"]) == 1  # the "magic" method
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        # Triton's tools (perf_analyzer) require one of each per successful request
        assert int(stats[stage]["count"]) == CALLS and int(stats[stage]["ns"]) > 0, stage
    assert int(stats["success"]["ns"]) >= int(stats["compute_infer"]["ns"])
    assert int(after["execution_count"]) == CALLS and int(after["last_inference"]) > 0

    embed = _stats(answer["embed_statistics"])
    assert embed["name"] == MODEL + ".embed" and int(embed["inference_count"]) == CALLS
    assert not embed["inference_stats"]["fail"] and not int(embed["inference_stats"]["compute_output"].get("ns", 0))
    names = {(e["name"], e["version"]) for e in answer["all_statistics"]["model_stats"]}
    assert names == {(MODEL, "1"), (MODEL + ".embed", "1")}  # the refused version has no statistics

    # The same figures as Prometheus: each stage's total time there is both models' totals here.
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    for stage, triton_stage in (("decode", "compute_input"), ("embed", "compute_infer"), ("head", "compute_output")):
        line = next(l for l in text.splitlines()
                    if l.startswith("metalearn_stage_duration_seconds_sum") and f'stage="{stage}"' in l)
        ns = sum(int(s["inference_stats"][triton_stage].get("ns", 0)) for s in (after, embed))
        assert abs(float(line.split()[-1]) * 1e9 - ns) < 1000, stage

def test_stream_infer_answers_each_request_and_goes_on_after_an_error(server, episode, tmp_path):
    require_tritonclient()
    answer = run_tools(server.target, save_episode(episode, tmp_path / "episode.npz"), "stream")
    good, bad, embed = answer["replies"]
    assert good["id"] == "good" and good["error"] is None and good["labels"] == answer["unary_labels"]
    assert bad["error"] and "unknown method 'magic'" in bad["error"]
    assert embed["id"] == "embed" and embed["error"] is None


@pytest.fixture()
def kserve(server):
    with grpc.insecure_channel(server.target) as channel:
        yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.mark.parametrize("call, message_sent, code, message", [
    ("ModelConfig", pb.ModelConfigRequest(name="no-such-model"), grpc.StatusCode.NOT_FOUND, "no-such-model"),
    ("ModelConfig", pb.ModelConfigRequest(name=MODEL, version="99"), grpc.StatusCode.NOT_FOUND, "no version '99'"),
    ("ModelStatistics", pb.ModelStatisticsRequest(name="no-such-model.embed"), grpc.StatusCode.NOT_FOUND,
     "no-such-model"),
    ("ModelStatistics", pb.ModelStatisticsRequest(version="1"), grpc.StatusCode.INVALID_ARGUMENT,
     "without a model name"),
    ("RepositoryIndex", pb.RepositoryIndexRequest(repository_name="other"), grpc.StatusCode.NOT_FOUND,
     "leave repository_name empty"),
])
def test_bad_tool_requests_get_precise_statuses(kserve, call, message_sent, code, message):
    with pytest.raises(grpc.RpcError) as error:
        getattr(kserve, call)(message_sent, timeout=10)
    assert error.value.code() == code
    assert message in error.value.details()


def test_statistics_of_one_version_and_the_ready_index(kserve):
    (entry,) = kserve.ModelStatistics(pb.ModelStatisticsRequest(name=MODEL, version="2"), timeout=10).model_stats
    assert (entry.name, entry.version) == (MODEL, "2")
    index = kserve.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=10).models
    assert index and all(m.state == "READY" for m in index)


def test_the_wire_contract_is_tritons(tmp_path):
    """Every message, field, enum value and method that metalearn's .proto files declare has Triton's number and
    type, read from the descriptors tritonclient itself ships."""
    require_tritonclient()
    ours = subprocess.run([sys.executable, str(CLIENTS / "proto_fields.py"), "metalearn"],
                          capture_output=True, text=True, check=True, timeout=60)
    theirs = subprocess.run([str(TRITON_PYTHON), str(CLIENTS / "proto_fields.py"), "tritonclient"],
                            capture_output=True, text=True, check=True, timeout=60)
    ours, theirs = json.loads(ours.stdout), json.loads(theirs.stdout)
    assert {"ModelConfig", "ModelStatistics", "RepositoryIndex", "ModelStreamInfer"} <= set(ours["methods"])
    for kind in ("methods", "fields", "enums"):
        assert {k: theirs[kind].get(k) for k in ours[kind]} == ours[kind], kind
