"""Overload, deadlines and shutdown: the server refuses or drops work it cannot do, and loses nothing it accepted."""
from __future__ import annotations

import signal
import threading
import time
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
import numpy as np
import pytest

from helpers import as_tensor, start_server, stop_server
from metalearn_client import Client, MetalearnError
from test_metrics import value


@pytest.fixture(scope="module")
def heavy(evaluation_data):
    """A 20-way 5-shot request with 300 queries: tens of milliseconds of model work."""
    images = evaluation_data.images
    support = as_tensor(images[:20, :5].reshape(-1, 28, 28))
    labels = [f"c{c}" for c in range(20) for _ in range(5)]
    return support, labels, as_tensor(images[:20, 5:].reshape(-1, 28, 28))


def scrape(server) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        return response.read().decode()


def concurrently(calls: int, call) -> list[BaseException | object]:
    results: list[BaseException | object] = [None] * calls
    barrier = threading.Barrier(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = call()
        except BaseException as error:  # noqa: BLE001 - collected for the assertions
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_beyond_the_queue_requests_are_refused_at_once(tmp_path, heavy):
    server = start_server(tmp_path, "--workers", "1", "--max-queued-requests", "2")
    try:
        with Client(server.target) as client:
            started = time.monotonic()
            results = concurrently(12, lambda: client.classify(*heavy))
            refused = [r for r in results if isinstance(r, MetalearnError)]
            assert refused and all(r.code == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
            assert "at capacity" in refused[0].details
            assert len(refused) < 12  # the running one and the queued ones were served
            assert time.monotonic() - started < 30
            assert len(client.classify(*heavy).predictions) == 300  # and the server serves on
        text = scrape(server)
        assert value(text, "metalearn_requests_total", rpc="Classify", code="RESOURCE_EXHAUSTED") == len(refused)
        assert value(text, "metalearn_queue_duration_seconds_count") >= 12 - len(refused)
    finally:
        stop_server(server)


def test_work_past_its_deadline_is_dropped(tmp_path, heavy):
    server = start_server(tmp_path, "--workers", "1")
    try:
        with Client(server.target) as client:
            before = value(scrape(server), "metalearn_stage_duration_seconds_count", stage="embed")
            results = concurrently(6, lambda: client.classify(*heavy, timeout=0.02))
            codes = {r.code for r in results if isinstance(r, MetalearnError)}
            assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}
            time.sleep(1.0)  # let anything still queued come due
            text = scrape(server)
            dropped = sum(value(text, "metalearn_requests_total", rpc="Classify", code=code)
                          for code in ("DEADLINE_EXCEEDED", "CANCELLED"))
            embedded = value(text, "metalearn_stage_duration_seconds_count", stage="embed") - before
            assert dropped >= 1 and embedded < 6  # the queued ones never reached the backbone
            assert len(client.classify(*heavy).predictions) == 300
    finally:
        stop_server(server)


def test_sigterm_under_load_loses_no_request(tmp_path, heavy):
    """Clients that watch health, as balancers and orchestrators do, see every request answered."""
    server = start_server(tmp_path, "--drain-seconds", "1", "--grace-seconds", "20")
    outcomes: list[str] = []
    draining = threading.Event()

    def watch() -> None:
        with grpc.insecure_channel(server.target) as channel:
            for status in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60):
                if status.status != health_pb2.HealthCheckResponse.SERVING:
                    draining.set()
                    return

    def load() -> None:
        with Client(server.target, timeout=30) as client:
            while not draining.is_set():
                try:
                    client.classify(*heavy)
                    outcomes.append("OK")
                except MetalearnError as error:
                    outcomes.append(f"{error.code.name}: {error.details}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    loaded = time.monotonic() + 60
    while len(outcomes) <= 6 and time.monotonic() < loaded:  # a round of answers in, more in flight
        time.sleep(0.1)
    server.process.send_signal(signal.SIGTERM)
    for thread in [watcher, *threads]:
        thread.join(timeout=60)
    assert server.process.wait(timeout=30) == 0
    assert draining.is_set() and len(outcomes) > 6
    assert set(outcomes) == {"OK"}, [o for o in outcomes if o != "OK"]
    assert "shutting down" in server.log()


def test_workers_default_to_one_on_the_cpu_provider_and_several_on_a_gpu():
    from metalearn_server.app import GPU_WORKERS, model_workers
    from metalearn_server.settings import parse

    assert parse([]).workers == 0  # automatic
    assert model_workers(0, ["CPUExecutionProvider"]) == 1
    assert model_workers(0, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == GPU_WORKERS > 1
    assert model_workers(3, ["CPUExecutionProvider"]) == 3
    with pytest.raises(SystemExit):
        parse(["--workers", "-1"])
