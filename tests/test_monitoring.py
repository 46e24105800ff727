"""Monitoring with the real tools: a Prometheus server scrapes the service and its HTTP API reports
what was sent; the alert rules pass promtool; the Grafana dashboard queries only metrics that exist."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from helpers import as_tensor, free_port, labels_of
from test_metrics import scrape, value

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing; `make test` installs it (Debian package prometheus) when run as root")
        pytest.skip(f"{name} not installed (Debian package prometheus)")
    return path


def query(port: int, expression: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_the_service(server, client, episode, tmp_path):
    prometheus = tool("prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{DEPLOY / 'prometheus' / 'alerts.yml'}"]
scrape_configs:
  - job_name: metalearn
    static_configs: [{{targets: ["127.0.0.1:{server.metrics_port}"]}}]
""")
    process = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"))
    try:
        ready_by = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > ready_by or process.poll() is not None:
                    raise AssertionError((tmp_path / "prometheus.log").read_text()[-2000:]) from None
                time.sleep(0.2)

        def classify_count() -> float:
            result = query(port, 'sum(metalearn_requests_total{rpc="Classify",code="OK"})')
            return float(result[0]["value"][1]) if result else -1.0

        def served_count() -> float:  # the server's own exposition, exact at this instant
            return value(scrape(server), "metalearn_requests_total", rpc="Classify", code="OK")

        deadline = time.monotonic() + 60
        while classify_count() < 0 and time.monotonic() < deadline:
            client.classify(as_tensor(episode.support), labels_of(episode, episode.support_labels),
                            as_tensor(episode.query))
            time.sleep(0.5)
        # A scrape may predate the last warm-up call: start counting once Prometheus has caught up.
        while classify_count() != served_count() and time.monotonic() < deadline:
            time.sleep(0.5)
        before = classify_count()
        assert before == served_count(), (tmp_path / "prometheus.log").read_text()[-2000:]

        latencies = []
        for _ in range(40):
            started = time.perf_counter()
            client.classify(as_tensor(episode.support), labels_of(episode, episode.support_labels),
                            as_tensor(episode.query))
            latencies.append(time.perf_counter() - started)
        sent_by_now = before + 40
        while classify_count() < sent_by_now and time.monotonic() < deadline:
            time.sleep(0.5)
        assert classify_count() == sent_by_now  # exactly what was sent (no other Classify runs meanwhile)

        rate = float(query(port, 'sum(rate(metalearn_requests_total{rpc="Classify"}[30s]))')[0]["value"][1])
        assert rate > 0
        median = float(query(port, 'histogram_quantile(0.5, sum by (le) '
                                   '(metalearn_request_duration_seconds_bucket{rpc="Classify"}))')[0]["value"][1])
        # The server-side median lies within the client-side range (the client adds the network).
        assert 0 < median <= max(latencies), (median, sorted(latencies))
        up = query(port, 'up{job="metalearn"}')
        assert up and up[0]["value"][1] == "1"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_alert_rules_pass_promtool():
    result = subprocess.run([tool("promtool"), "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_only_existing_metrics(server, client, episode):
    client.classify(as_tensor(episode.support), labels_of(episode, episode.support_labels), as_tensor(episode.query))
    text = scrape(server)
    exposed = set(re.findall(r"^(\w+?)(?:_bucket|_sum|_count)?(?:\{| )", text, re.M))
    exposed |= set(re.findall(r"^# TYPE (\w+)", text, re.M))  # declared, even with no sample yet
    exposed |= {name + "_total" for name in exposed}
    exposed |= {name + suffix for name in exposed for suffix in ("_bucket", "_sum", "_count")}
    dashboard = json.loads((DEPLOY / "grafana" / "metalearn-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for e in expressions for name in re.findall(r"\b((?:metalearn|process)_\w+)", e)}
    assert used and used <= exposed, used - exposed
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("requests per second", "p99", "stage", "errors", "tasks", "provider"):
        assert topic in titles
