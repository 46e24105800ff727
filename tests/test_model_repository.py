"""The model repository loads what it can serve and refuses, with a reason, what it cannot."""
from __future__ import annotations

import json
import logging
import shutil

import pytest

from metalearn_server.errors import NotFound
from metalearn_server.execution.model_config import ConfigError, ModelConfig
from metalearn_server.execution.repository import BUNDLED_REPOSITORY, ModelRepository

CPU = ["CPUExecutionProvider"]


@pytest.fixture()
def bundled_version():
    model_dir = BUNDLED_REPOSITORY / "omniglot-conv4"
    return max(model_dir.iterdir(), key=lambda p: int(p.name))


def copy_version(source, repository, name, version):
    target = repository / name / version
    shutil.copytree(source, target)
    return target


def test_versions_and_defaults(tmp_path, bundled_version):
    copy_version(bundled_version, tmp_path, "alpha", "1")
    copy_version(bundled_version, tmp_path, "alpha", "10")
    copy_version(bundled_version, tmp_path, "beta", "2")
    repository = ModelRepository(tmp_path, CPU)
    assert repository.default_model == "alpha"
    assert repository.get().version == "10"  # numeric order, not text order
    assert repository.get("alpha", "1").version == "1"
    assert repository.get("beta").name == "beta"
    with pytest.raises(NotFound, match="no version '3'"):
        repository.get("beta", "3")
    assert ModelRepository(tmp_path, CPU, default_model="beta").get().name == "beta"


@pytest.mark.parametrize("breakage, reason", [
    (lambda d: (d / "config.json").unlink(), "config.json is missing"),
    (lambda d: (d / "config.json").write_text("{"), "not valid JSON"),
    (lambda d: (d / "backbone.onnx").write_bytes(b"garbage"), ""),
    (lambda d: (d / "linear_head.onnx").unlink(), ""),
    (lambda d: _edit(d, lambda c: c["input"].__setitem__("shape", [3, 28])), "preprocessing"),
    (lambda d: _edit(d, lambda c: c["defaults"].__setitem__("method", "magic")), "defaults.method"),
    (lambda d: _edit(d, lambda c: c["temperature"].__setitem__("cosine", -1)), "temperature"),
    (lambda d: _edit(d, lambda c: c.pop("heads")), "missing 'heads'"),
])
def test_broken_versions_are_refused_and_the_rest_serves(tmp_path, bundled_version, caplog, breakage, reason):
    copy_version(bundled_version, tmp_path, "model", "1")
    broken = copy_version(bundled_version, tmp_path, "model", "2")
    breakage(broken)
    with caplog.at_level(logging.ERROR):
        repository = ModelRepository(tmp_path, CPU)
    assert repository.get("model").version == "1"
    assert any("refusing model model version 2" in r.message and reason in r.message for r in caplog.records)


def _edit(directory, change):
    config = json.loads((directory / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config))


def test_an_empty_repository_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no loadable model"):
        ModelRepository(tmp_path, CPU)


def test_config_types_are_checked(bundled_version):
    raw = json.loads((bundled_version / "config.json").read_text())
    assert ModelConfig.from_dict(raw).input_shape == (1, 28, 28)
    raw["embedding_size"] = "64"
    with pytest.raises(ConfigError, match="embedding_size: expected int"):
        ModelConfig.from_dict(raw)
