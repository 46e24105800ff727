"""The `metalearn` command, run as a user would: a support folder of PNG files per class."""
from __future__ import annotations

import json
import subprocess
import sys

from helpers import as_png, labels_of


def run_cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metalearn_client.cli", "--target", server.target, *args],
                          capture_output=True, text=True, timeout=60)


def test_classify_a_support_folder(server, episode, tmp_path):
    support = tmp_path / "letters"
    for index, (image, label) in enumerate(zip(episode.support, labels_of(episode, episode.support_labels))):
        (support / label).mkdir(parents=True, exist_ok=True)
        (support / label / f"teacher-{index}.png").write_bytes(as_png(image))
    queries = []
    for index, image in enumerate(episode.query):
        path = tmp_path / f"learner-{index}.png"
        path.write_bytes(as_png(image))
        queries.append(str(path))
    truth = labels_of(episode, episode.query_labels)

    text = run_cli(server, "classify", "--support", str(support), *queries)
    assert text.returncode == 0, text.stderr
    lines = [line.split("\t") for line in text.stdout.strip().splitlines()]
    assert [line[0] for line in lines] == queries
    assert sum(line[1] == label for line, label in zip(lines, truth)) >= 0.85 * len(truth)
    assert all(len(line[2].split(", ")) == 3 for line in lines)  # top 3 by default

    as_json = run_cli(server, "classify", "--support", str(support), "--method", "finetune", "--json", *queries)
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)
    assert result["method"] == "finetune" and sorted(result["classes"]) == sorted(set(truth))
    for prediction in result["predictions"]:
        assert abs(sum(prediction["scores"].values()) - 1) < 1e-4


def test_unknown_queries_are_marked(server, episode, evaluation_data, tmp_path):
    support = tmp_path / "letters"
    for index, (image, label) in enumerate(zip(episode.support, labels_of(episode, episode.support_labels))):
        (support / label).mkdir(parents=True, exist_ok=True)
        (support / label / f"{index}.png").write_bytes(as_png(image))
    outsider = next(c for c in range(evaluation_data.num_classes) if c not in episode.classes)
    known, stranger = tmp_path / "known.png", tmp_path / "stranger.png"
    known.write_bytes(as_png(episode.query[0]))
    stranger.write_bytes(as_png(evaluation_data.images[outsider, 0]))
    result = run_cli(server, "classify", "--support", str(support), "--rejection-threshold", "0.5",
                     str(known), str(stranger))
    assert result.returncode == 0, result.stderr
    lines = dict(line.split("\t")[:2] for line in result.stdout.strip().splitlines())
    assert lines[str(known)] == labels_of(episode, episode.query_labels[:1])[0]
    assert lines[str(stranger)] == "(unknown)"


def test_models_and_health(server):
    models = run_cli(server, "models")
    assert models.returncode == 0 and "omniglot-conv4 (default)" in models.stdout
    assert "CPUExecutionProvider" in models.stdout
    health = run_cli(server, "health")
    assert health.returncode == 0 and health.stdout.strip() == "SERVING"


def test_errors_are_reported_with_their_code(server, tmp_path):
    (tmp_path / "only" / "one").mkdir(parents=True)
    (tmp_path / "only" / "one" / "a.png").write_bytes(b"not a png")
    result = run_cli(server, "classify", "--support", str(tmp_path / "only"), str(tmp_path / "only" / "one" / "a.png"))
    assert result.returncode == 2
    assert "INVALID_ARGUMENT" in result.stderr and "single class" in result.stderr
