"""The `metalearn` command, run as a user would: a support folder of PNG files per class."""
from __future__ import annotations

import json
import subprocess
import sys

from helpers import as_png, free_port, labels_of


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
    # Classes in sorted folder-name order (the README says so; the API's own order is first appearance).
    assert result["method"] == "finetune" and result["classes"] == sorted(set(truth))
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


def one_error_line(result: subprocess.CompletedProcess, status: int = 2) -> str:
    """The CLI's only way to fail: exit ``status`` and one ``error: ...`` line, never a traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_every_user_mistake_is_one_error_line(server, episode, tmp_path):
    support = tmp_path / "letters"
    for index, (image, label) in enumerate(zip(episode.support, labels_of(episode, episode.support_labels))):
        (support / label).mkdir(parents=True, exist_ok=True)
        (support / label / f"{index}.png").write_bytes(as_png(image))
    missing = tmp_path / "no-such.png"
    assert f"query file {missing} does not exist" in one_error_line(
        run_cli(server, "classify", "--support", str(support), str(missing)))
    assert "is a folder; give image files" in one_error_line(
        run_cli(server, "classify", "--support", str(support), str(support)))
    assert "is not a folder" in one_error_line(run_cli(server, "classify", "--support", str(missing), str(missing)))
    (tmp_path / "empty").mkdir()
    assert "has no <class>/<image>" in one_error_line(
        run_cli(server, "classify", "--support", str(tmp_path / "empty"), str(missing)))
    assert "required" in one_error_line(run_cli(server, "classify"))  # argparse's own errors too
    assert "invalid choice" in one_error_line(run_cli(server, "clasify"))
    unreadable = tmp_path / "ca.pem"  # a TLS file that is not there
    assert f"cannot read {unreadable}" in one_error_line(run_cli(server, "--tls-ca", str(unreadable), "models"))


def test_health_exits_1_with_nothing_listening(tmp_path):
    """--help promises exit status 1 unless SERVING; before, nothing listening exited 2."""
    nowhere = subprocess.run([sys.executable, "-m", "metalearn_client.cli", "--target", f"127.0.0.1:{free_port()}",
                              "--timeout", "5", "health"], capture_output=True, text=True, timeout=60)
    assert "check the address (host:port) and that the server is running" in one_error_line(nowhere, status=1)
