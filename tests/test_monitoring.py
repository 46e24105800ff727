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
  - job_name: kubernetes-pods  # what annotation-based discovery calls it: nothing may assume "metalearn"
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
        build = query(port, "metalearn_build_info")
        assert [b["metric"]["job"] for b in build] == ["kubernetes-pods"] and build[0]["metric"]["version"]
        assert query(port, "absent(metalearn_build_info)") == []  # MetalearnDown is quiet while it is up
        rss = query(port, dashboard_expression("Server memory"))  # the RSS panel finds the target by that series
        assert len(rss) == 1 and float(rss[0]["value"][1]) > 10e6
    finally:
        process.terminate()
        process.wait(timeout=30)


def dashboard_expression(title_start: str) -> str:
    dashboard = json.loads((DEPLOY / "grafana" / "metalearn-dashboard.json").read_text())
    panel = next(p for p in dashboard["panels"] if p["title"].startswith(title_start))
    return panel["targets"][0]["expr"]


def test_alert_rules_pass_promtool():
    result = subprocess.run([tool("promtool"), "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_down_alerts_fire_whatever_the_job_is_called(tmp_path):
    """promtool's rule unit tests: a metalearn target under another job name stops answering (its series go
    stale, as a failed scrape makes them); both down alerts fire for it, none for a target that is not
    metalearn's, and nothing fires while it answers."""
    target = 'job="kubernetes-pods", instance="10.0.0.7:8002"'
    tests = tmp_path / "alerts-test.yml"
    tests.write_text(f"""
rule_files: ["{DEPLOY / 'prometheus' / 'alerts.yml'}"]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - {{series: 'metalearn_build_info{{{target}, version="1.0.0"}}', values: "1x4 stale"}}
      - {{series: 'up{{{target}}}', values: "1x4 0x20"}}
      - {{series: 'up{{job="node", instance="10.0.0.9:9100"}}', values: "0x25"}}
    alert_rule_test:
      - {{eval_time: 3m, alertname: MetalearnDown, exp_alerts: []}}
      - {{eval_time: 3m, alertname: MetalearnInstanceDown, exp_alerts: []}}
      - eval_time: 10m
        alertname: MetalearnDown
        exp_alerts:
          - exp_labels: {{severity: critical}}
            exp_annotations:
              summary: "no metalearn server is scraped: every replica is down, or gone from service discovery"
      - eval_time: 10m
        alertname: MetalearnInstanceDown
        exp_alerts:
          - exp_labels: {{severity: critical, {target.replace('=', ': ')}}}
            exp_annotations: {{summary: "metalearn 10.0.0.7:8002 is not answering scrapes"}}
""")
    result = subprocess.run([tool("promtool"), "test", "rules", str(tests)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_rule_or_panel_assumes_a_job_name():
    dashboard = json.loads((DEPLOY / "grafana" / "metalearn-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    expressions += re.findall(r"expr: (.+)", (DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert expressions and not [e for e in expressions if re.search(r"\bjob\s*!?=", e)]
