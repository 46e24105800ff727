"""Prometheus metrics, served in the plain text exposition format.

Labels are low-cardinality by design: rpc, model, method, stage, status code,
eviction reason.  Never a task id, never a label a caller chooses freely.
A request's model and method are only known once the data plane has resolved
them, so the transport opens a :class:`RequestLabels` per call in a context
variable and the data plane fills it in (:func:`label_request`).

Each inference's queue wait and stage times also go into its model version's
:class:`~metalearn_server.observability.statistics.InferenceStatistics` (what the
KServe v2 ``ModelStatistics`` call answers), in the same call that observes them here.
"""
from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector,
                               ProcessCollector, disable_created_metrics, start_http_server)

from metalearn_server.observability.statistics import InferenceCost, InferenceStatistics

# `*_created` timestamps double the exposition and no dashboard here reads them.
disable_created_metrics()

#: From 100 µs to 10 s: fine enough for sub-millisecond heads and cached tasks.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025,
                   0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


@dataclass
class RequestLabels:
    rpc: str
    model: str = ""
    method: str = ""


_current: contextvars.ContextVar[RequestLabels | None] = contextvars.ContextVar("request_labels", default=None)
#: The inference being served, if any; model-work threads see it too (scheduling.model_work copies the context).
_inference: contextvars.ContextVar[InferenceCost | None] = contextvars.ContextVar("inference_cost", default=None)


def label_request(model: str, method: str = "") -> None:
    """Record the resolved model (and method) of the request being served, if any."""
    labels = _current.get()
    if labels is not None:
        labels.model, labels.method = model, method or labels.method


class Metrics:
    """Every metric of the server, on a registry of its own."""

    def __init__(self, version: str = "") -> None:
        """``version``: the server's, on ``metalearn_build_info``."""
        self.statistics = InferenceStatistics()
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.request_latency = Histogram(
            "metalearn_request_duration_seconds", "Time to answer an RPC, from receipt to response.",
            ["rpc", "model", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_latency = Histogram(
            "metalearn_stage_duration_seconds",
            "Time spent in each stage of a request: decode (images or tensors to model input), "
            "embed (backbone), head (prototypes, adaptation and scoring).",
            ["stage", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_latency = Histogram(
            "metalearn_queue_duration_seconds", "Time a request waited for a model-work slot.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter(
            "metalearn_requests", "RPCs answered, by final gRPC status code.", ["rpc", "code"], registry=r)
        self.in_flight = Gauge("metalearn_requests_in_flight", "RPCs being served now.", ["rpc"], registry=r)
        self.support_items = Histogram(
            "metalearn_support_items", "Support items per request.", ["rpc"], buckets=SIZE_BUCKETS, registry=r)
        self.query_items = Histogram(
            "metalearn_query_items", "Query items per request.", ["rpc"], buckets=SIZE_BUCKETS, registry=r)
        self.tasks = Gauge("metalearn_tasks", "Registered tasks alive now.", registry=r)
        self.task_bytes = Gauge("metalearn_task_bytes", "Bytes held by registered tasks' heads.", registry=r)
        self.task_evictions = Counter(
            "metalearn_task_evictions", "Tasks dropped before deletion, by reason (expired, capacity).",
            ["reason"], registry=r)
        self.model_load_failures = Counter(
            "metalearn_model_load_failures", "Model versions refused at load (bad config or graphs).", ["model"],
            registry=r)
        # A series of the project's own on every metalearn target: dashboards and alerts select targets by it
        # (``… and on(job, instance) metalearn_build_info``, ``absent(metalearn_build_info)``), never by a scrape
        # job name that each Prometheus set-up chooses.  A gauge, not the OpenMetrics info type, which
        # promtool's check of the text format refuses.
        self.build_info = Gauge("metalearn_build_info", "The metalearn server answering here (always 1).",
                                ["version"], registry=r)
        self.build_info.labels(version).set(1)
        self.model_info = Gauge(
            "metalearn_model_info", "Loaded model versions (always 1) with the execution provider in use.",
            ["model", "version", "provider"], registry=r)

    def show_models(self, loaded: list[tuple[str, str, str]]) -> None:
        """Replace the model-info series with one per loaded (model, version, provider)."""
        self.model_info.clear()
        for model, version, provider in loaded:
            self.model_info.labels(model, version, provider).set(1)

    def track_tasks(self, count: Callable[[], int], nbytes: Callable[[], int]) -> None:
        self.tasks.set_function(count)
        self.task_bytes.set_function(nbytes)

    @contextmanager
    def stage(self, stage: str, model: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self.stage_latency.labels(stage, model).observe(seconds)
            cost = _inference.get()
            if cost is not None:
                cost.stage_seconds[stage] += seconds

    def queued(self, seconds: float) -> None:
        """A request's wait for model-work slots."""
        self.queue_latency.observe(seconds)
        cost = _inference.get()
        if cost is not None:
            cost.queue_seconds += seconds

    @contextmanager
    def inference(self, model: str, version: str, kind: str) -> Iterator[None]:
        """Count the enclosed work as one inference of ``kind`` on the model version: a success if it returns,
        a failure if it raises (bad input, deadline, cancellation)."""
        cost = InferenceCost()
        token = _inference.set(cost)
        started, ok = time.perf_counter(), False
        try:
            yield
            ok = True
        finally:
            _inference.reset(token)
            self.statistics.record(model, version, kind, time.perf_counter() - started, cost, ok)

    @contextmanager
    def request(self, rpc: str) -> Iterator[RequestLabels]:
        """Time one RPC; the caller sets the status code via :meth:`count`."""
        labels = RequestLabels(rpc)
        token = _current.set(labels)
        gauge = self.in_flight.labels(rpc)
        gauge.inc()
        started = time.perf_counter()
        try:
            yield labels
        finally:
            self.request_latency.labels(rpc, labels.model, labels.method).observe(time.perf_counter() - started)
            gauge.dec()
            _current.reset(token)

    def count(self, rpc: str, code: str) -> None:
        self.requests.labels(rpc, code).inc()

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` from a background thread."""
        start_http_server(port, addr=address, registry=self.registry)
