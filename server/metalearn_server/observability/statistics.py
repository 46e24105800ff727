"""Cumulative inference statistics per model version, in the terms of Triton's statistics extension.

They are not measured separately: :class:`~metalearn_server.observability.metrics.Metrics`
adds each queue wait and stage time to them where it observes the same figure for
Prometheus, so ``ModelStatistics`` and ``/metrics`` never disagree.  Totals are kept
for what a caller addressed: the few-shot model (:data:`CLASSIFY`) or its backbone alone
(:data:`EMBED`), per repository model and version, since the server started.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

#: What an inference served: the few-shot model (Classify, CreateTask, ClassifyTask, v2 ModelInfer)…
CLASSIFY = "classify"
#: … or the backbone alone (Embed, v2 ModelInfer on ``<name>.embed``).
EMBED = "embed"
#: The data plane's stages, as the Prometheus ``stage`` label names them.
STAGES = ("decode", "embed", "head")


@dataclass
class Duration:
    """How often something happened, and the seconds it took in all."""

    count: int = 0
    seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds


@dataclass
class InferenceCost:
    """What one inference spent, gathered while it runs (its steps run one after another, never at once)."""

    queue: Duration = field(default_factory=Duration)
    stages: dict[str, Duration] = field(default_factory=lambda: {stage: Duration() for stage in STAGES})


@dataclass
class VersionStatistics:
    """Totals of one model version as one kind of inference; queue and stage times count successes only,
    as Triton's do."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    stages: dict[str, Duration] = field(default_factory=lambda: {stage: Duration() for stage in STAGES})
    last_inference: float = 0.0  # seconds since the epoch; 0: never

    @property
    def executions(self) -> int:
        """Backbone calls: a request larger than the model's batch is embedded in several."""
        return self.stages["embed"].count


class InferenceStatistics:
    """Totals keyed by (model, version, kind); read and written on the event loop only."""

    def __init__(self) -> None:
        self._totals: dict[tuple[str, str, str], VersionStatistics] = {}

    def record(self, model: str, version: str, kind: str, seconds: float, cost: InferenceCost, ok: bool) -> None:
        totals = self._totals.setdefault((model, version, kind), VersionStatistics())
        if not ok:
            totals.fail.add(seconds)
            return
        totals.success.add(seconds)
        totals.queue.count += cost.queue.count
        totals.queue.seconds += cost.queue.seconds
        for stage, spent in cost.stages.items():
            totals.stages[stage].count += spent.count
            totals.stages[stage].seconds += spent.seconds
        totals.last_inference = time.time()

    def get(self, model: str, version: str, kind: str) -> VersionStatistics:
        """The totals so far; all zero for a version nobody has called yet."""
        return self._totals.get((model, version, kind)) or VersionStatistics()
