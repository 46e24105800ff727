"""The KServe v2 / Open Inference Protocol service, proven with the real ``tritonclient[grpc]``
from PyPI, and its error paths with stubs generated from the same grpc_service.proto."""
from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from metalearn.kserve.v2 import grpc_service_pb2 as pb
from metalearn.kserve.v2 import grpc_service_pb2_grpc

from helpers import as_tensor, labels_of

ROOT = Path(__file__).resolve().parents[1]
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
MODEL = "omniglot-conv4"


@pytest.fixture()
def kserve(server):
    with grpc.insecure_channel(server.target) as channel:
        yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


def bytes_tensor(labels: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(label.encode())) + label.encode() for label in labels)


def infer_request(support: np.ndarray, labels: list[str], queries: np.ndarray, **parameters) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor
    request = pb.ModelInferRequest(
        model_name=MODEL, id="req-7",
        inputs=[tensor(name="SUPPORT", datatype="FP32", shape=support.shape),
                tensor(name="SUPPORT_LABELS", datatype="BYTES", shape=[len(labels)]),
                tensor(name="QUERY", datatype="FP32", shape=queries.shape)],
        raw_input_contents=[support.astype("<f4").tobytes(), bytes_tensor(labels), queries.astype("<f4").tobytes()])
    for name, value in parameters.items():
        field = {str: "string_param", int: "int64_param", float: "double_param"}[type(value)]
        setattr(request.parameters[name], field, value)
    return request


def decode_bytes(raw: bytes) -> list[str]:
    out, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        out.append(raw[offset + 4: offset + 4 + length].decode())
        offset += 4 + length
    return out


def test_tritonclient_matches_native_api(server, client, episode, tmp_path):
    if not TRITON_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(".venv-triton is missing; `make test` installs tritonclient[grpc] there")
        pytest.skip("tritonclient venv not installed (make dev)")
    support, queries = as_tensor(episode.support), as_tensor(episode.query)
    labels = labels_of(episode, episode.support_labels)
    np.savez(tmp_path / "episode.npz", support=support, labels=np.array(labels), queries=queries)
    result = subprocess.run([str(TRITON_PYTHON), str(ROOT / "tests" / "clients" / "tritonclient_fewshot.py"),
                             server.target, MODEL, str(tmp_path / "episode.npz")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)

    assert answer["live"] and answer["ready"] and answer["model_ready"]
    assert answer["unknown_model_ready"] is False
    assert answer["server"]["name"] == "metalearn"
    metadata = answer["metadata"]
    assert metadata["platform"] == "metalearn_fewshot" and metadata["versions"] == client.get_model(MODEL).versions
    assert [(t["name"], t["datatype"]) for t in metadata["inputs"]] == [
        ("SUPPORT", "FP32"), ("SUPPORT_LABELS", "BYTES"), ("QUERY", "FP32")]
    assert metadata["inputs"][0]["shape"] == ["-1", "1", "28", "28"]  # int64 is a string in protobuf's JSON
    assert {t["name"] for t in metadata["outputs"]} == {"SCORES", "CLASSES", "LABELS", "KNOWN_SCORE"}
    assert [t["name"] for t in answer["embed_metadata"]["outputs"]] == ["EMBEDDINGS"]

    native = client.classify(support, labels, queries, method="finetune", steps=5)
    assert answer["id"] == "triton-1" and answer["model_version"] == native.model_version
    assert answer["output_order"] == ["LABELS", "SCORES", "CLASSES"]
    assert answer["classes"] == native.classes
    assert answer["labels"] == native.labels
    assert np.mean(np.array(answer["labels"]) == np.array(labels_of(episode, episode.query_labels))) > 0.9
    np.testing.assert_allclose(np.array(answer["scores"]), native.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(answer["embeddings"]), client.embed(queries), rtol=1e-5, atol=1e-5)


def test_typed_contents_equal_raw_contents(kserve, episode):
    """The protocol's other encoding (typed repeated fields) gives the same answer as raw bytes."""
    support, queries = as_tensor(episode.support), as_tensor(episode.query)
    labels = labels_of(episode, episode.support_labels)
    raw = kserve.ModelInfer(infer_request(support, labels, queries, distance="cosine"), timeout=30)

    typed = infer_request(support, labels, queries, distance="cosine")
    del typed.raw_input_contents[:]
    typed.inputs[0].contents.fp32_contents.extend(support.ravel().tolist())
    typed.inputs[1].contents.bytes_contents.extend(label.encode() for label in labels)
    typed.inputs[2].contents.fp32_contents.extend(queries.ravel().tolist())
    answer = kserve.ModelInfer(typed, timeout=30)

    assert [o.name for o in answer.outputs] == ["SCORES", "CLASSES", "LABELS", "KNOWN_SCORE"]
    assert answer.raw_output_contents == raw.raw_output_contents
    scores_meta = answer.outputs[0]
    scores = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(scores_meta.shape)
    assert scores_meta.datatype == "FP32" and scores.shape == (len(queries), 5)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    assert decode_bytes(answer.raw_output_contents[1]) == list(dict.fromkeys(labels))
    assert answer.id == "req-7" and answer.model_name == MODEL


def test_rejection_threshold_parameter_marks_unknown(kserve, episode):
    support, queries = as_tensor(episode.support), as_tensor(episode.query)
    labels = labels_of(episode, episode.support_labels)
    answer = kserve.ModelInfer(infer_request(support, labels, queries, rejection_threshold=1.0), timeout=30)
    names = [o.name for o in answer.outputs]
    assert decode_bytes(answer.raw_output_contents[names.index("LABELS")]) == [""] * len(queries)


def test_metadata_of_unknown_model_is_not_found(kserve):
    with pytest.raises(grpc.RpcError) as error:
        kserve.ModelMetadata(pb.ModelMetadataRequest(name="no-such-model"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in error.value.details()


def _break(request: pb.ModelInferRequest, how: str) -> pb.ModelInferRequest:
    if how == "missing input":
        del request.inputs[2], request.raw_input_contents[2]
    elif how == "raw count":
        del request.raw_input_contents[2]
    elif how == "raw size":
        request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    elif how == "bytes framing":
        request.raw_input_contents[1] = request.raw_input_contents[1] + b"\x09"
    elif how == "datatype":
        request.inputs[0].datatype = "FP8"
    elif how == "unknown parameter":
        request.parameters["temperature"].double_param = 2.0
    elif how == "parameter type":
        request.parameters["adaptation_steps"].string_param = "5"
    elif how == "method":
        request.parameters["method"].string_param = "magic"
    elif how == "output":
        request.outputs.add(name="LOGITS")
    elif how in ("empty support", "empty queries"):
        index = 0 if how == "empty support" else 2
        request.inputs[index].shape[0] = 0
        request.raw_input_contents[index] = b""
        if index == 0:
            request.inputs[1].shape[0] = 0
            request.raw_input_contents[1] = b""
    elif how == "label count":
        request.inputs[1].shape[0] -= 1
        request.raw_input_contents[1] = bytes_tensor(["a"] * request.inputs[1].shape[0])
    return request


@pytest.mark.parametrize("how, message", [
    ("missing input", "takes the inputs SUPPORT, SUPPORT_LABELS, QUERY"),
    ("raw count", "raw_input_contents has 2 entries for 3 inputs"),
    ("raw size", "raw bytes; shape"),
    ("bytes framing", "bytes after its"),
    ("datatype", "datatype 'FP8'"),
    ("unknown parameter", "unknown parameter temperature"),
    ("parameter type", "send it as int64_param"),
    ("method", "unknown method 'magic'"),
    ("output", "has no output 'LOGITS'"),
    ("label count", "labels"),
    ("empty support", "support.items is empty"),
    ("empty queries", "queries is empty"),
])
def test_bad_inference_requests_are_invalid_argument(kserve, episode, how, message):
    support, queries = as_tensor(episode.support), as_tensor(episode.query)
    request = _break(infer_request(support, labels_of(episode, episode.support_labels), queries), how)
    with pytest.raises(grpc.RpcError) as error:
        kserve.ModelInfer(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()
    assert kserve.ServerLive(pb.ServerLiveRequest(), timeout=10).live  # and the server keeps serving


def test_outputs_are_checked_before_the_model_runs_and_only_those_asked_for_are_sent(kserve, episode):
    support, queries = as_tensor(episode.support), as_tensor(episode.query)
    request = infer_request(support, labels_of(episode, episode.support_labels), queries)

    def counts() -> tuple[int, int]:
        stats = [entry.inference_stats for entry in
                 kserve.ModelStatistics(pb.ModelStatisticsRequest(name=MODEL), timeout=10).model_stats]
        return sum(s.success.count for s in stats), sum(s.fail.count for s in stats)

    before = counts()
    request.outputs.add(name="SCORES")
    request.outputs.add(name="LOGITS")
    with pytest.raises(grpc.RpcError) as error:
        kserve.ModelInfer(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "has no output 'LOGITS'" in error.value.details()
    assert counts() == before  # refused before the model did any work

    del request.outputs[1]
    request.outputs.add(name="LABELS")
    answer = kserve.ModelInfer(request, timeout=30)
    assert [output.name for output in answer.outputs] == ["SCORES", "LABELS"] and len(answer.raw_output_contents) == 2
    scores = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(answer.outputs[0].shape)
    assert scores.shape == (len(queries), len(set(episode.support_labels)))
    assert len(decode_bytes(answer.raw_output_contents[1])) == len(queries)
    assert counts() == (before[0] + 1, before[1])
