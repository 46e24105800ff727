"""Texts as items, end to end: the bundled text model served beside the image model, over real gRPC
(native API, KServe v2 BYTES tensors), from the Python client, the CLI and the Node.js client."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess

import grpc
import numpy as np
import pytest
from metalearn.kserve.v2 import grpc_service_pb2 as kserve
from metalearn.kserve.v2 import grpc_service_pb2_grpc as kserve_grpc
from metalearn.v1 import model_pb2

from metalearn_client import Texts
from test_cli import run_cli
from test_node_client import NODE_CLIENT

MODEL = "text-minilm"

#: A teacher's topics with three example questions each, and new learner questions with their topic.
SUPPORT = {
    "fractions": ["how do I add two fractions with different denominators", "what is one half plus one third",
                  "how do you simplify 6/8 to lowest terms"],
    "photosynthesis": ["why do plants need sunlight to make their food",
                       "which gas do leaves take in during photosynthesis",
                       "where in the plant cell does photosynthesis happen"],
    "french revolution": ["why did the french revolution start in 1789", "who stormed the bastille and why",
                          "what happened to king louis xvi"],
    "essay writing": ["how long should the introduction of my essay be", "how do I write a strong thesis statement",
                      "what should go into the conclusion paragraph"],
}
QUERIES = {
    "how do I multiply a fraction by a whole number": "fractions",
    "how do plants turn light into chemical energy": "photosynthesis",
    "what made the people of paris rise against the monarchy": "french revolution",
    "how many paragraphs should the body of my essay have": "essay writing",
    "is 3/4 bigger than 2/3": "fractions",
    "what is chlorophyll for": "photosynthesis",
}
SUPPORT_TEXTS = [text for texts in SUPPORT.values() for text in texts]
SUPPORT_LABELS = [label for label, texts in SUPPORT.items() for _ in texts]


def test_the_text_model_is_served_beside_the_image_model(client):
    assert [m.name for m in client.list_models()] == ["omniglot-conv4", MODEL]
    assert client.get_model().name == "omniglot-conv4"  # still the default
    model = client.get_model(MODEL)
    assert model.item_kind == model_pb2.ITEM_KIND_TEXT and model.embedding_size == 384
    assert model.text.max_tokens == 32 and model.text.truncates and model.text.max_bytes == 4096
    assert not model.HasField("input") and not model.HasField("preprocessing")
    assert "CLINC150" in model.model_card and "## Accuracy" in model.model_card
    assert client.get_model("omniglot-conv4").item_kind == model_pb2.ITEM_KIND_IMAGE


def test_learner_questions_are_routed_to_the_right_topics(client):
    result = client.classify(Texts(SUPPORT_TEXTS), SUPPORT_LABELS, Texts(list(QUERIES)), model=MODEL,
                             rejection_threshold=0.0)
    assert result.model == MODEL and result.classes == list(SUPPORT)
    assert result.labels == list(QUERIES.values())
    task = client.create_task(Texts(SUPPORT_TEXTS), SUPPORT_LABELS, model=MODEL, method="finetune")
    answer = client.classify_task(task.task_id, Texts(list(QUERIES)), rejection_threshold=0.0)
    assert answer.labels == list(QUERIES.values())


def test_embeddings_are_unit_length_and_truncation_keeps_the_meaning(client):
    long = "how do I add two fractions with different denominators " + "please " * 200
    embeddings = client.embed(Texts(["how do I add two fractions with different denominators", long]), model=MODEL)
    assert embeddings.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)
    assert embeddings[0] @ embeddings[1] > 0.5  # the first 32 tokens still say what it is about


def bytes_elements(texts: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(text.encode())) + text.encode() for text in texts)


def test_kserve_v2_takes_texts_as_bytes_tensors(server):
    tensor = kserve.ModelInferRequest.InferInputTensor
    queries = list(QUERIES)
    request = kserve.ModelInferRequest(
        model_name=MODEL,
        inputs=[tensor(name="SUPPORT", datatype="BYTES", shape=[len(SUPPORT_TEXTS)]),
                tensor(name="SUPPORT_LABELS", datatype="BYTES", shape=[len(SUPPORT_LABELS)]),
                tensor(name="QUERY", datatype="BYTES", shape=[len(queries)])],
        raw_input_contents=[bytes_elements(SUPPORT_TEXTS), bytes_elements(SUPPORT_LABELS), bytes_elements(queries)])
    request.parameters["rejection_threshold"].double_param = 0.0
    with grpc.insecure_channel(server.target) as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(kserve.ModelMetadataRequest(name=MODEL), timeout=10)
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs][0] == ("SUPPORT", "BYTES", [-1])
        response = stub.ModelInfer(request, timeout=30)
        outputs = {o.name: raw for o, raw in zip(response.outputs, response.raw_output_contents)}
        assert bytes_elements(list(QUERIES.values())) == outputs["LABELS"]
        request.raw_input_contents[2] = struct.pack("<I", 2) + b"\xff\xfe" + bytes_elements(queries[1:])
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(request, timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "input QUERY element 0 is not UTF-8" in error.value.details()


def test_cli_reads_text_folders_csv_and_json_lines(server, tmp_path):
    folder = tmp_path / "topics"
    for label, texts in SUPPORT.items():
        (folder / label).mkdir(parents=True)
        for index, text in enumerate(texts):
            (folder / label / f"{index}.txt").write_text(text + "\n")
    (tmp_path / "support.csv").write_text("text,label\n" + "".join(f'"{t}",{l}\n' for t, l in zip(SUPPORT_TEXTS, SUPPORT_LABELS)))
    (tmp_path / "support.jsonl").write_text("".join(json.dumps({"text": t, "label": l}) + "\n"
                                                    for t, l in zip(SUPPORT_TEXTS, SUPPORT_LABELS)))
    (tmp_path / "queries.txt").write_text("\n".join(list(QUERIES)[1:]) + "\n")
    for support in (folder, tmp_path / "support.csv", tmp_path / "support.jsonl"):
        result = run_cli(server, "classify-text", "--model", MODEL, "--support", str(support),
                         "--rejection-threshold", "0", list(QUERIES)[0], "--queries-file", str(tmp_path / "queries.txt"))
        assert result.returncode == 0, result.stderr
        lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
        assert [line[0] for line in lines] == list(QUERIES) and [line[1] for line in lines] == list(QUERIES.values())
    (tmp_path / "bad.csv").write_text("question,topic\nwhat,fractions\n")
    result = run_cli(server, "classify-text", "--model", MODEL, "--support", str(tmp_path / "bad.csv"), "what")
    assert result.returncode == 2 and "header text,label" in result.stderr
    models = run_cli(server, "models")
    assert f"{MODEL}\tversions 1\tinput texts (up to 32 tokens" in models.stdout


def test_node_client_sends_texts(server, tmp_path):
    node = shutil.which("node")
    if node is None or not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        if os.environ.get("CI"):
            pytest.fail("node or client/node/node_modules is missing; `make test` runs npm ci there")
        pytest.skip("Node.js client not installed")
    request = {"model": MODEL, "support": {"texts": SUPPORT_TEXTS}, "labels": SUPPORT_LABELS,
               "queries": {"texts": list(QUERIES)}, "method": "METHOD_TRANSDUCTIVE", "rejection_threshold": 0}
    (tmp_path / "request.json").write_text(json.dumps(request))
    result = subprocess.run([node, str(NODE_CLIENT / "metalearn.js"), server.target, str(tmp_path / "request.json")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["classes"] == list(SUPPORT) and answer["method"] == "METHOD_TRANSDUCTIVE"
    assert answer["labels"] == list(QUERIES.values())
