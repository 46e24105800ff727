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

    queue_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))


@dataclass
class VersionStatistics:
    """Totals of one model version as one kind of inference.

    As in Triton for a model without batching, one successful request is one inference and one execution,
    and the queue and compute totals cover successful requests only: each has as many as there are
    successes (Triton's tools check that), with the request's time in every decode, backbone or head step
    added up (a large request is embedded in several backbone calls; a backbone-only one has no head time).
    """

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    last_inference: float = 0.0  # seconds since the epoch; 0: never

    def queue(self) -> Duration:
        return Duration(self.success.count, self.queue_seconds)

    def stage(self, stage: str) -> Duration:
        return Duration(self.success.count, self.stage_seconds[stage])


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
        totals.queue_seconds += cost.queue_seconds
        for stage, spent in cost.stage_seconds.items():
            totals.stage_seconds[stage] += spent
        totals.last_inference = time.time()

    def get(self, model: str, version: str, kind: str) -> VersionStatistics:
        """The totals so far; all zero for a version nobody has called yet."""
        return self._totals.get((model, version, kind)) or VersionStatistics()
