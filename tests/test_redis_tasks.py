"""Tasks shared across replicas through a real redis-server (Debian package) started here."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import grpc
import numpy as np
import pytest

from helpers import as_tensor, free_port, labels_of, start_server, stop_server
from metalearn_client import Client, MetalearnError
from test_metrics import scrape, value


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing; `make test` installs it (Debian package redis-server) as root")
        pytest.skip("redis-server not installed")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                "--dir", str(tmp_path_factory.mktemp("redis"))], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=30)


def test_a_task_created_on_one_replica_serves_on_another(tmp_path, redis_url, episode):
    first = start_server(tmp_path, "--redis-url", redis_url, "--poll-seconds", "0.2")
    second = start_server(tmp_path, "--redis-url", redis_url, "--poll-seconds", "0.2")
    support, queries = as_tensor(episode.support), as_tensor(episode.query)
    labels = labels_of(episode, episode.support_labels)
    try:
        with Client(first.target) as a, Client(second.target) as b:
            for method in ("prototype", "finetune"):
                task = a.create_task(support, labels, method=method, steps=5)
                direct = a.classify(support, labels, queries, method=method, steps=5)
                shared = b.classify_task(task.task_id, queries)
                assert shared.classes == direct.classes and shared.labels == direct.labels
                np.testing.assert_allclose(shared.scores, direct.scores, rtol=1e-5, atol=1e-6)
                assert [len(r.labels) for r in b.stream(task.task_id, [queries[:3], queries])] == [3, len(queries)]
                b.delete_task(task.task_id)
                with pytest.raises(MetalearnError) as error:
                    a.classify_task(task.task_id, queries)
                assert error.value.code == grpc.StatusCode.NOT_FOUND and "create it again" in error.value.details

            short = a.create_task(support, labels, ttl_seconds=1)
            assert len(b.classify_task(short.task_id, queries).labels) == len(queries)
            time.sleep(2.2)
            with pytest.raises(MetalearnError) as error:
                b.classify_task(short.task_id, queries)
            assert error.value.code == grpc.StatusCode.NOT_FOUND

            kept = a.create_task(support, labels)
            time.sleep(0.8)
            assert value(scrape(second), "metalearn_tasks") >= 1 and value(scrape(second), "metalearn_task_bytes") > 0
            b.delete_task(kept.task_id)
    finally:
        stop_server(first)
        stop_server(second)
