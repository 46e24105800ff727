"""Tasks shared across replicas through a real redis-server (Debian package) started here."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import grpc
import numpy as np
import pytest

from helpers import as_tensor, eventually, free_port, labels_of, start_server, stop_server
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
            # The gauges follow Redis at each store check (app.STORE_CHECK_SECONDS).
            eventually(lambda: value(scrape(second), "metalearn_tasks") >= 1
                       and value(scrape(second), "metalearn_task_bytes") > 0, seconds=5)
            b.delete_task(kept.task_id)
    finally:
        stop_server(first)
        stop_server(second)


def test_a_lost_task_store_is_unavailable_then_serves_again(tmp_path, episode):
    """Redis goes away: task calls answer UNAVAILABLE (retryable, saying so) instead of INTERNAL, health marks
    FewShotService NOT_SERVING while Classify still works, and everything serves again once Redis is back."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = free_port()
    redis = subprocess.Popen([shutil.which("redis-server") or pytest.skip("redis-server not installed"), "--port",
                              str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                              "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    server = start_server(tmp_path, "--redis-url", f"redis://127.0.0.1:{port}/0")
    support, queries = as_tensor(episode.support), as_tensor(episode.query)
    labels = labels_of(episode, episode.support_labels)

    def fewshot_health(channel) -> int:
        request = health_pb2.HealthCheckRequest(service="metalearn.v1.FewShotService")
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status

    try:
        with Client(server.target, retries=0) as client, grpc.insecure_channel(server.target) as channel:
            task = client.create_task(support, labels)
            redis.terminate()
            redis.wait(timeout=30)
            for call in (lambda: client.classify_task(task.task_id, queries), lambda: client.create_task(support, labels),
                         lambda: client.delete_task(task.task_id)):
                with pytest.raises(MetalearnError) as error:
                    call()
                assert error.value.code == grpc.StatusCode.UNAVAILABLE, error.value.details
                assert f"Redis at 127.0.0.1:{port}" in error.value.details and "retry" in error.value.details
            assert len(client.classify(support, labels, queries).labels) == len(queries)  # needs no store
            deadline = time.monotonic() + 20
            while fewshot_health(channel) != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() < deadline, "health never reported the lost store"
                time.sleep(0.2)
            assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING  # the process itself is fine: liveness stays

            redis = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                                     stdout=subprocess.DEVNULL)
            deadline = time.monotonic() + 20
            while fewshot_health(channel) != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline, "health never saw the store come back"
                time.sleep(0.2)
            again = client.create_task(support, labels)
            assert len(client.classify_task(again.task_id, queries).labels) == len(queries)
        text = scrape(server)
        assert value(text, "metalearn_requests_total", code="INTERNAL") == 0
        assert value(text, "metalearn_requests_total", code="UNAVAILABLE") == 3
    finally:
        stop_server(server)
        redis.terminate()
        redis.wait(timeout=30)
