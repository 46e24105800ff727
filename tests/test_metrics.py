"""The Prometheus endpoint: values move with traffic, labels stay low-cardinality, promtool accepts it."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.request

import numpy as np
import pytest

from helpers import as_tensor, eventually, labels_of


def scrape(server) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name{labels…}`` (labels matched as a subset), 0 if absent."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_metrics_follow_requests(server, client, episode):
    before = scrape(server)
    support_labels = labels_of(episode, episode.support_labels)
    for _ in range(3):
        client.classify(as_tensor(episode.support), support_labels, as_tensor(episode.query))
    client.classify(as_tensor(episode.support), support_labels, as_tensor(episode.query), method="finetune")
    task = client.create_task(as_tensor(episode.support), support_labels)
    with pytest.raises(Exception):
        client.classify(as_tensor(episode.support), support_labels[:-1], as_tensor(episode.query))

    def settled() -> str | None:
        """The status reaches the client a moment before the server's books close on that call."""
        text = scrape(server)
        return text if value(text, "metalearn_requests_in_flight", rpc="Classify") == 0 else None

    after = eventually(settled, seconds=5)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    latency = "metalearn_request_duration_seconds_count"
    assert delta(latency, rpc="Classify", model="omniglot-conv4", method="prototype") == 4  # 3 + the failed one
    assert delta(latency, rpc="Classify", model="omniglot-conv4", method="finetune") == 1
    assert delta("metalearn_requests_total", rpc="Classify", code="OK") == 4
    assert delta("metalearn_requests_total", rpc="Classify", code="INVALID_ARGUMENT") == 1
    assert delta("metalearn_requests_total", rpc="CreateTask", code="OK") == 1
    for stage in ("decode", "embed", "head"):
        assert delta("metalearn_stage_duration_seconds_count", stage=stage, model="omniglot-conv4") >= 4
    assert delta("metalearn_support_items_sum", rpc="Classify") == 4 * len(episode.support)  # not the bad one
    assert delta("metalearn_query_items_sum", rpc="Classify") == 4 * len(episode.query)
    assert value(after, "metalearn_tasks") >= 1
    for version in ("1", "2", "3", "4", "5"):  # every loaded version of the bundled model
        assert value(after, "metalearn_model_info", model="omniglot-conv4", version=version,
                     provider="CPUExecutionProvider") == 1
    assert value(after, "metalearn_requests_in_flight", rpc="Classify") == 0
    # Sub-millisecond buckets exist, and no task id leaks into a label.
    assert 'le="0.0001"' in after and task.task_id not in after
    client.delete_task(task.task_id)


def test_promtool_accepts_the_exposition(server, client, episode, tmp_path):
    client.classify(as_tensor(episode.support), labels_of(episode, episode.support_labels), as_tensor(episode.query))
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing; `make test` installs it (Debian package prometheus) when run as root")
        pytest.skip("promtool not installed (Debian package prometheus)")
    result = subprocess.run([promtool, "check", "metrics"], input=scrape(server), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert np.isfinite(value(scrape(server), "metalearn_request_duration_seconds_sum", rpc="Classify"))
