"""Clients ride out a server killed and restarted under load; retries stay off non-idempotent calls."""
from __future__ import annotations

import json
import signal
import threading
import time


from helpers import as_tensor, start_server, stop_server
from metalearn_client import Client, MetalearnError
from metalearn_client.client import retry_service_config


def test_retry_policy_covers_only_idempotent_calls():
    config = json.loads(retry_service_config(5, 0.1, 2.0))["methodConfig"][0]
    methods = {(name["service"], name["method"]) for name in config["name"]}
    assert ("metalearn.v1.FewShotService", "Classify") in methods
    assert ("metalearn.v1.FewShotService", "CreateTask") not in methods
    assert ("metalearn.v1.FewShotService", "StreamClassifyTask") not in methods
    assert config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_clients_recover_when_the_server_is_killed_and_restarted(tmp_path, evaluation_data):
    server = start_server(tmp_path)
    support = as_tensor(evaluation_data.images[:5, :5].reshape(-1, 28, 28))
    labels = [f"c{c}" for c in range(5) for _ in range(5)]
    queries = as_tensor(evaluation_data.images[:5, 5:10].reshape(-1, 28, 28))
    outcomes: list[tuple[float, str]] = []
    stop = threading.Event()

    def load() -> None:
        with Client(server.target, timeout=20, retries=4, retry_backoff=0.2) as client:
            while not stop.is_set():
                try:
                    client.classify(support, labels, queries)
                    outcomes.append((time.monotonic(), "OK"))
                except MetalearnError as error:
                    outcomes.append((time.monotonic(), error.code.name))
                    time.sleep(0.2)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    killed_at = time.monotonic()
    restarted = start_server(tmp_path, port=server.port)
    time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    try:
        failures = [code for _, code in outcomes if code != "OK"]
        assert set(failures) <= {"UNAVAILABLE"}, failures
        assert len(failures) <= 2 * len(threads)  # at most what was in flight, or waiting out the restart
        assert any(code == "OK" and at > killed_at for at, code in outcomes)  # served again after the restart
        with Client(restarted.target) as client:
            assert client.health() == "SERVING"
    finally:
        assert stop_server(restarted) == 0
