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


def _swap_heads(config):
    config["heads"]["prototype"], config["heads"]["linear"] = config["heads"]["linear"], config["heads"]["prototype"]


def _input_32(config):
    config["input"]["shape"] = [1, 32, 32]
    config["preprocessing"].update(width=32, height=32)


@pytest.mark.parametrize("breakage, reason", [
    # Each loads file by file, and today's server served it (issue 17); the self-check refuses it.
    (_input_32, "input.shape says [N, 1, 32, 32]"),
    (lambda c: (c["input"].__setitem__("name", "pixels"), _swap_heads(c)), "input.name says 'pixels'"),
    (_swap_heads, "is not a prototype head graph"),
    (lambda c: c.__setitem__("embedding_size", 576), "embedding_size says 576"),
])
def test_versions_whose_files_do_not_fit_together_are_refused(tmp_path, bundled_version, caplog, breakage, reason):
    copy_version(bundled_version, tmp_path, "model", "1")
    _edit(copy_version(bundled_version, tmp_path, "model", "2"), breakage)
    with caplog.at_level(logging.ERROR):
        repository = ModelRepository(tmp_path, CPU)
    assert repository.get("model").version == "1"
    assert reason in repository.refused[("model", "2")].reason
    assert any("refusing model model version 2" in r.message and reason in r.message for r in caplog.records)


def test_one_bad_entry_never_stops_a_rescan(tmp_path, bundled_version, caplog):
    """A dangling link anywhere, or folders whose names are not versions ('²' passes str.isdigit), are skipped;
    versions that appear later still load."""
    copy_version(bundled_version, tmp_path, "model", "1")
    repository = ModelRepository(tmp_path, CPU)
    (tmp_path / "dangling-model").symlink_to(tmp_path / "nowhere")
    (tmp_path / "model" / "9").symlink_to(tmp_path / "nowhere")
    (tmp_path / "model" / "1" / "dangling-file").symlink_to(tmp_path / "nowhere")
    for name in ("²", "07", "0", "v3"):
        (tmp_path / "model" / name).mkdir()
    with caplog.at_level(logging.WARNING):
        repository.refresh()
        copy_version(bundled_version, tmp_path, "model", "2")
        assert repository.refresh()
    assert repository.get("model").version == "2" and repository.get("model", "1").version == "1"
    ignored = [r.message for r in caplog.records if r.message.startswith("ignoring")]
    assert len(ignored) == 4 and any("²" in m for m in ignored)
    repository.refresh()  # each is logged once, not at every scan
    assert len([r for r in caplog.records if r.message.startswith("ignoring")]) == 4


def test_a_refusal_is_kept_until_the_files_change_or_go(tmp_path, bundled_version):
    copy_version(bundled_version, tmp_path, "model", "1")
    broken = copy_version(bundled_version, tmp_path, "model", "2")
    _edit(broken, lambda c: c.__setitem__("embedding_size", 7))
    repository = ModelRepository(tmp_path, CPU)
    assert "embedding_size says 7" in repository.refused[("model", "2")].reason
    shutil.copy(bundled_version / "config.json", broken / "config.json")
    repository.refresh()
    assert repository.get("model").version == "2" and not repository.refused
    _edit(copy_version(bundled_version, tmp_path, "model", "3"), _swap_heads)
    repository.refresh()
    assert ("model", "3") in repository.refused
    shutil.rmtree(tmp_path / "model" / "3")
    repository.refresh()
    assert not repository.refused


@pytest.mark.parametrize("breakage, reason", [
    (lambda c: c["input"].__setitem__("feeds", ["input_ids", "attention_mask", "token_type_ids"]),
     "config.json's input.feeds says ['input_ids', 'attention_mask', 'token_type_ids']"),
    (lambda c: c.__setitem__("embedding_size", 768), "embedding_size says 768"),
])
def test_text_versions_pass_the_self_check_on_a_synthetic_text_episode(tmp_path, breakage, reason):
    """The bundled text model passes the self-check (texts of vocabulary words, every method and distance);
    a config whose feeds or embedding size are not its graph's is refused."""
    text_version = BUNDLED_REPOSITORY / "text-minilm" / "1"
    copy_version(text_version, tmp_path, "text", "1")
    _edit(copy_version(text_version, tmp_path, "text", "2"), breakage)
    repository = ModelRepository(tmp_path, CPU)
    assert repository.get("text").version == "1" and repository.get("text").config.kind == "text"
    assert reason in repository.refused[("text", "2")].reason


@pytest.mark.parametrize("change, message", [
    (lambda c: c["input"].__setitem__("kind", "audio"), "input.kind: 'audio' is not one of ('image', 'text')"),
    (lambda c: c["input"].__setitem__("feeds", ["attention_mask"]), "including 'input_ids'"),
    (lambda c: c["input"].__setitem__("max_tokens", 1), "input.max_tokens: 1 must be within 3 to 4096"),
    (lambda c: c["input"].pop("tokenizer"), "input: missing 'tokenizer'"),
])
def test_text_config_fields_are_checked(change, message):
    raw = json.loads((BUNDLED_REPOSITORY / "text-minilm" / "1" / "config.json").read_text())
    change(raw)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        ModelConfig.from_dict(raw)
