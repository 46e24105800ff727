"""A client in another language, generated from the same protos: Node.js with @grpc/grpc-js and
@grpc/proto-loader (from npm) calls health, ListModels and Classify, and agrees with Python."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from helpers import as_tensor, labels_of

NODE_CLIENT = Path(__file__).resolve().parents[1] / "client" / "node"


def test_node_client_matches_python(server, client, episode, tmp_path):
    node = shutil.which("node")
    if node is None or not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        if os.environ.get("CI"):
            pytest.fail("node or client/node/node_modules is missing; `make test` runs npm ci there")
        pytest.skip("Node.js client not installed")
    support, queries = as_tensor(episode.support), as_tensor(episode.query)
    labels = labels_of(episode, episode.support_labels)
    request = {
        "support": {"shape": list(support.shape), "data": base64.b64encode(support.astype("<f4").tobytes()).decode()},
        "labels": labels,
        "queries": {"shape": list(queries.shape), "data": base64.b64encode(queries.astype("<f4").tobytes()).decode()},
        "method": "METHOD_FINETUNE",
    }
    (tmp_path / "request.json").write_text(json.dumps(request))
    result = subprocess.run([node, str(NODE_CLIENT / "metalearn.js"), server.target, str(tmp_path / "request.json")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    python = client.classify(support, labels, queries, method="finetune")
    assert answer["health"] == "SERVING"
    assert answer["models"] == [{"name": "omniglot-conv4", "versions": ["1", "2", "3", "4", "5"]},
                                {"name": "text-minilm", "versions": ["1"]}]
    assert answer["method"] == "METHOD_FINETUNE"
    assert answer["classes"] == python.classes and answer["labels"] == python.labels
    np.testing.assert_allclose(np.array(answer["scores"]), python.scores, rtol=1e-6, atol=1e-7)


def test_node_client_without_arguments_prints_its_usage():
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js not installed")
    result = subprocess.run([node, str(NODE_CLIENT / "metalearn.js")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("usage: node metalearn.js HOST:PORT REQUEST.json")
    assert '"support": {"shape"' in result.stderr and "Error" not in result.stderr
