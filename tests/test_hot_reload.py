"""The model repository changes under a running server: new versions serve, broken ones are refused
while the previous version keeps serving, removed ones unload; no restart."""
from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest

from helpers import eventually, start_server, stop_server
from metalearn_client import Client, MetalearnError
from metalearn_server.execution.repository import BUNDLED_REPOSITORY
from test_metrics import value

SUPPORT, LABELS = np.zeros((4, 1, 28, 28), np.float32), ["a", "b", "a", "b"]


def versions(client: Client) -> list[str]:
    return list(client.list_models()[0].versions)


def metrics(server) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        return response.read().decode()


@pytest.fixture()
def repository(tmp_path):
    root = tmp_path / "models"
    shutil.copytree(BUNDLED_REPOSITORY / "omniglot-conv4" / "1", root / "omniglot-conv4" / "1")
    return root


def test_versions_come_and_go_without_a_restart(tmp_path, repository):
    server = start_server(tmp_path, "--model-repository", str(repository), "--poll-seconds", "0.2")
    model_dir = repository / "omniglot-conv4"
    try:
        with Client(server.target) as client:
            assert versions(client) == ["1"]
            task = client.create_task(SUPPORT, LABELS)

            # A new version appears (written elsewhere, then moved in, as a deploy would).
            shutil.copytree(model_dir / "1", tmp_path / "staging")
            (tmp_path / "staging").rename(model_dir / "2")
            eventually(lambda: versions(client) == ["1", "2"])
            assert client.classify(SUPPORT, LABELS, SUPPORT).model_version == "2"
            assert client.classify(SUPPORT, LABELS, SUPPORT, version="1").model_version == "1"

            # A broken version is refused, with a log line and a metric; version 2 keeps serving.
            shutil.copytree(model_dir / "1", model_dir / "3")
            (model_dir / "3" / "backbone.onnx").write_bytes(b"not onnx")
            eventually(lambda: value(metrics(server), "metalearn_model_load_failures_total",
                                     model="omniglot-conv4") == 1)
            assert versions(client) == ["1", "2"]
            assert client.classify(SUPPORT, LABELS, SUPPORT).model_version == "2"
            assert "refusing model omniglot-conv4 version 3" in server.log()
            time.sleep(1.0)  # refused once, not again at every scan
            assert value(metrics(server), "metalearn_model_load_failures_total", model="omniglot-conv4") == 1

            # Repairing it makes it load.
            shutil.copy(model_dir / "1" / "backbone.onnx", model_dir / "3" / "backbone.onnx")
            eventually(lambda: versions(client) == ["1", "2", "3"])

            # Incompatible input shape: refused, with the reason.
            shutil.copytree(model_dir / "1", tmp_path / "bad")
            config = json.loads((tmp_path / "bad" / "config.json").read_text())
            config["input"]["shape"] = [3, 28, 28]
            (tmp_path / "bad" / "config.json").write_text(json.dumps(config))
            (tmp_path / "bad").rename(model_dir / "4")
            eventually(lambda: "refusing model omniglot-conv4 version 4" in server.log())
            assert versions(client) == ["1", "2", "3"]

            # Unloading: the folder goes, the version goes; existing tasks keep working.
            shutil.rmtree(model_dir / "3")
            shutil.rmtree(model_dir / "2")
            eventually(lambda: versions(client) == ["1"])
            with pytest.raises(MetalearnError) as error:
                client.classify(SUPPORT, LABELS, SUPPORT, version="2")
            assert error.value.code == grpc.StatusCode.NOT_FOUND
            assert len(client.classify_task(task.task_id, SUPPORT).predictions) == 4
            info = metrics(server)
            assert value(info, "metalearn_model_info", version="1") == 1
            assert value(info, "metalearn_model_info", version="2") == 0
    finally:
        stop_server(server)


def test_broken_deploys_are_never_served_under_load(tmp_path, repository):
    """Versions whose files load but do not fit together, a dangling link and a folder named '²' appear under
    load: each broken version is refused with its cause, no request fails, and a good version after them loads."""
    server = start_server(tmp_path, "--model-repository", str(repository), "--poll-seconds", "0.2")
    model_dir = repository / "omniglot-conv4"
    failures: list[str] = []
    served: set[str] = set()
    stop = threading.Event()

    def load() -> None:
        with Client(server.target, retries=0) as client:
            while not stop.is_set():
                try:
                    served.add(client.classify(SUPPORT, LABELS, SUPPORT).model_version)
                except MetalearnError as error:
                    failures.append(f"{error.code.name}: {error.details}")

    def deploy(version: str, change) -> None:
        staging = tmp_path / f"staging-{version}"
        shutil.copytree(model_dir / "1", staging, symlinks=True)
        config = json.loads((staging / "config.json").read_text())
        change(config)
        (staging / "config.json").write_text(json.dumps(config))
        staging.rename(model_dir / version)

    def swap_heads(config: dict) -> None:
        heads = config["heads"]
        heads["prototype"], heads["linear"] = heads["linear"], heads["prototype"]

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        with Client(server.target) as client:
            deploy("2", lambda c: (c["input"].update(shape=[1, 32, 32]), c["preprocessing"].update(width=32, height=32)))
            deploy("3", lambda c: (c["input"].update(name="pixels"), swap_heads(c)))
            deploy("4", lambda c: c.update(embedding_size=2304))
            (model_dir / "1" / "stale-link").symlink_to(tmp_path / "gone")
            (model_dir / "²").mkdir()
            eventually(lambda: value(metrics(server), "metalearn_model_load_failures_total",
                                     model="omniglot-conv4") == 3)
            for version, cause in (("2", "input.shape"), ("3", "input.name"), ("4", "embedding_size")):
                line = next(line for line in server.log().splitlines()
                            if f"refusing model omniglot-conv4 version {version}" in line)
                assert cause in line, line
            assert versions(client) == ["1"] and client.get_model().embedding_size == 64
            deploy("5", lambda c: None)  # a good version still loads after all that
            eventually(lambda: versions(client) == ["1", "5"])
            eventually(lambda: "5" in served)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        stop_server(server)
    assert failures == [] and served == {"1", "5"}
