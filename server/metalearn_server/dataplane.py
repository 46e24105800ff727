"""The data plane: every RPC's work, independent of gRPC.

request → validate → decode → embed → head → result.  Model work runs in a
thread pool (ONNX Runtime releases the GIL), so the asyncio event loop that
carries gRPC never blocks on a model.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, TypeVar

import numpy as np

from metalearn_server import validation
from metalearn_server.errors import InvalidArgument
from metalearn_server.execution.model import FewShotModel, Head, Scores
from metalearn_server.execution.model_config import Adaptation
from metalearn_server.execution.preprocessing import decode_images
from metalearn_server.execution.repository import ModelEntry, ModelRepository
from metalearn_server.observability.metrics import Metrics, label_request
from metalearn_server.requests import Classification, Items, QueryRequest, SupportRequest
from metalearn_server.scheduling.admission import Admission
from metalearn_server.scheduling.task_store import Task, TaskStore
from metalearn_server.validation import Limits

if TYPE_CHECKING:
    from metalearn_server.scheduling.redis_task_store import RedisTaskStore

T = TypeVar("T")


class DataPlane:
    def __init__(self, repository: ModelRepository, tasks: TaskStore | "RedisTaskStore", metrics: Metrics,
                 limits: Limits, workers: int, max_queued: int) -> None:
        self.repository, self.tasks, self.metrics, self.limits = repository, tasks, metrics, limits
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model")
        self.admission = Admission(max_concurrent=workers, max_queued=max_queued)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    async def _run(self, work: Callable[..., T], *args: object) -> T:
        """Model work, once admitted (see :mod:`~metalearn_server.scheduling.admission`)."""
        async with self.admission.slot() as waited:
            self.metrics.queue_latency.observe(waited)
            return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)

    # -- models -------------------------------------------------------------------------
    def model(self, name: str, version: str) -> FewShotModel:
        model = self.repository.get(name, version)
        label_request(model.name)
        return model

    def models(self) -> tuple[list[ModelEntry], str]:
        return self.repository.entries(), self.repository.default_model

    def model_versions(self, model: FewShotModel) -> list[str]:
        entry = self.repository.models.get(model.name)  # None if a reload removed it meanwhile
        return entry.ordered_versions() if entry else [model.version]

    # -- the pipeline's steps, run in the executor ------------------------------------------
    def _model_input(self, model: FewShotModel, items: Items, what: str) -> np.ndarray:
        with self.metrics.stage("decode", model.name):
            if items.tensor is None:
                return decode_images(list(items.encoded_images), model.config.preprocessing, what,
                                     self.limits.max_image_pixels)
            return validation.model_input(items, model, what)

    def _embed(self, model: FewShotModel, *batches: np.ndarray) -> list[np.ndarray]:
        """Embed several batches in one backbone call, and split the result back."""
        with self.metrics.stage("embed", model.name):
            embeddings = model.embed(np.concatenate(batches) if len(batches) > 1 else batches[0])
        return np.split(embeddings, np.cumsum([len(b) for b in batches])[:-1])

    def _head(self, model: FewShotModel, support: np.ndarray, targets: np.ndarray, classes: int,
              method: str, distance: str, adaptation: Adaptation, queries: np.ndarray | None = None) -> Head:
        """The method's head; ``queries`` are needed by the transductive method only (Classify)."""
        onehot = np.eye(classes, dtype=np.float32)[targets]
        with self.metrics.stage("head", model.name):
            head = model.head(method, support, onehot, distance, adaptation, queries)
        if head.adapted and not (np.isfinite(head.weight).all() and np.isfinite(head.bias).all()):
            raise InvalidArgument(
                f"fast adaptation diverged (steps {adaptation.steps}, learning_rate {adaptation.learning_rate}, "
                f"l2 {adaptation.l2}); lower the learning rate or l2, or leave them to the model's defaults")
        return head

    def _score(self, model: FewShotModel, queries: np.ndarray, head: Head) -> Scores:
        with self.metrics.stage("head", model.name):
            scores = model.score(queries, head)
        if not np.isfinite(scores.probabilities).all():
            raise InvalidArgument("the adapted head's scores overflowed; lower the learning rate or l2")
        return scores

    # -- RPCs ---------------------------------------------------------------------------
    def _resolve(self, request: SupportRequest, rpc: str) -> tuple[FewShotModel, str, str, Adaptation,
                                                                     tuple[str, ...], np.ndarray]:
        model = self.model(request.model, request.model_version)
        method = validation.method(request.method, model)
        label_request(model.name, method)
        distance = validation.distance(request.distance, model)
        adaptation = validation.adaptation(request.adaptation, method, model, self.limits)
        validation.require_items(request.items, "support.items", self.limits.max_support_items, self.limits)
        classes, targets = validation.class_index(request.labels, request.items.count, self.limits)
        self.metrics.support_items.labels(rpc).observe(request.items.count)
        return model, method, distance, adaptation, classes, targets

    def _queries(self, request: QueryRequest, model: FewShotModel, distance: str, rpc: str) -> tuple[int, float]:
        """Check the query side; return the resolved top k and rejection threshold."""
        validation.require_items(request.items, "queries", self.limits.max_query_items, self.limits)
        self.metrics.query_items.labels(rpc).observe(request.items.count)
        return (validation.top_k(request.top_k, self.limits),
                validation.rejection_threshold(request.rejection_threshold, model, distance))

    async def classify(self, request: SupportRequest, queries: QueryRequest) -> Classification:
        model, method, distance, adaptation, classes, targets = self._resolve(request, "Classify")
        top_k, threshold = self._queries(queries, model, distance, "Classify")

        def work() -> Scores:
            support_input = self._model_input(model, request.items, "support.items")
            query_input = self._model_input(model, queries.items, "queries")
            support, query = self._embed(model, support_input, query_input)
            head = self._head(model, support, targets, len(classes), method, distance, adaptation, query)
            return self._score(model, query, head)

        scores = await self._run(work)
        return Classification(model.name, model.version, classes, scores.probabilities, scores.known, threshold,
                              method, distance, top_k)

    async def create_task(self, request: SupportRequest, ttl_seconds: int) -> Task:
        model, method, distance, adaptation, classes, targets = self._resolve(request, "CreateTask")
        validation.task_method(method)

        def work() -> Head:
            (support,) = self._embed(model, self._model_input(model, request.items, "support.items"))
            return self._head(model, support, targets, len(classes), method, distance, adaptation)

        head = await self._run(work)
        return await self.tasks.add(model, classes, head, method, distance, ttl_seconds)

    async def classify_task(self, task_id: str, queries: QueryRequest, rpc: str) -> Classification:
        task = await self.tasks.get(task_id)
        label_request(task.model.name, task.method)
        top_k, threshold = self._queries(queries, task.model, task.distance, rpc)

        def work() -> Scores:
            (query,) = self._embed(task.model, self._model_input(task.model, queries.items, "queries"))
            return self._score(task.model, query, task.head)

        scores = await self._run(work)
        return Classification(task.model.name, task.model.version, task.classes, scores.probabilities, scores.known,
                              threshold, task.method, task.distance, top_k)

    async def delete_task(self, task_id: str) -> None:
        await self.tasks.delete(task_id)

    async def embed(self, model_name: str, version: str, items: Items) -> tuple[FewShotModel, np.ndarray]:
        model = self.model(model_name, version)
        validation.require_items(items, "items", self.limits.max_query_items, self.limits)
        self.metrics.query_items.labels("Embed").observe(items.count)

        def work() -> np.ndarray:
            return self._embed(model, self._model_input(model, items, "items"))[0]

        return model, await self._run(work)
