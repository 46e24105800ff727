"""The data plane: every RPC's work, independent of gRPC.

request → validate → admit → (decode → embed) per chunk → head → result.

Everything that can be checked without a model is checked first, on the event
loop, so a malformed request costs almost nothing.  The model work is then a
:class:`~metalearn_server.scheduling.model_work.Job` of short steps: each
chunk of items is decoded (or its values checked) and embedded in one step,
the head and the first queries' scores run in the last chunk's step (a small
episode is one step), and scoring many queries against many classes goes on
in steps of bounded work.  Between steps the caller's fair turn, deadline and
cancellation are checked (:mod:`~metalearn_server.scheduling`), so a huge
request neither starves small ones nor runs on for a caller who has gone, and
no request holds more than one chunk of decoded input.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, AsyncIterator, Callable, Iterator, TypeVar

import numpy as np

from metalearn_server import validation
from metalearn_server.errors import InvalidArgument
from metalearn_server.execution.item_input import require_kind
from metalearn_server.execution.model import FewShotModel, Head, Scores
from metalearn_server.execution.model_config import Adaptation
from metalearn_server.execution.repository import ModelEntry, ModelRepository
from metalearn_server.observability.metrics import Metrics, label_request
from metalearn_server.observability.statistics import CLASSIFY, EMBED, VersionStatistics
from metalearn_server.requests import Classification, Items, Piece, QueryRequest, SupportRequest
from metalearn_server.scheduling.model_work import Job, ModelWork
from metalearn_server.scheduling.task_store import Task, TaskStore
from metalearn_server.validation import Limits

if TYPE_CHECKING:
    from metalearn_server.scheduling.redis_task_store import RedisTaskStore

T = TypeVar("T")


class DataPlane:
    def __init__(self, repository: ModelRepository, tasks: TaskStore | "RedisTaskStore", metrics: Metrics,
                 limits: Limits, work: ModelWork, max_response_bytes: int) -> None:
        self.repository, self.tasks, self.metrics, self.limits = repository, tasks, metrics, limits
        self.work, self.max_response_bytes = work, max_response_bytes

    def close(self) -> None:
        self.work.close()

    @asynccontextmanager
    async def _job(self, *inputs: Items) -> AsyncIterator[Job]:
        """The request's model work, admitted by its items and bytes (see scheduling.admission)."""
        async with self.work.job(sum(i.count for i in inputs), sum(i.nbytes for i in inputs)) as job:
            try:
                yield job
            finally:
                self.metrics.queued(job.waited)

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

    def loaded(self, name: str = "", version: str = "") -> list[FewShotModel]:
        """Every loaded version of the model (of every model if ``name`` is empty), or only ``version``."""
        if version:
            return [self.model(name, version)]
        models = self.repository.models  # one snapshot: a reload replaces the dict whole
        names = [self.model(name, "").name] if name else sorted(models)  # NotFound for a model not served
        return [models[n].versions[v] for n in names if n in models for v in models[n].ordered_versions()]

    def version_states(self) -> list[tuple[str, str, str]]:
        """(model, version, why it is refused, or "" if it serves) for every version folder in the repository."""
        states = {(model.name, model.version): "" for model in self.loaded()}
        states.update({key: refusal.reason for key, refusal in self.repository.refused.items()})
        return [(name, version, reason) for (name, version), reason in
                sorted(states.items(), key=lambda item: (item[0][0], int(item[0][1])))]

    def statistics(self, model: FewShotModel, kind: str) -> VersionStatistics:
        return self.metrics.statistics.get(model.name, model.version, kind)

    # -- the pipeline's steps -----------------------------------------------------------
    async def _embed(self, job: Job, model: FewShotModel, *inputs: tuple[Items, str],
                     then: Callable[..., T] | None = None) -> list[np.ndarray] | T:
        """Embed ``inputs`` (support, then queries) as one sequence, one backbone call per step, and split
        the embeddings back per input; with ``then``, ``then(*embeddings)`` runs in the last chunk's step
        and is what returns, so a request of one chunk is one step."""
        convert = model.input.converter(self.limits)  # per request: images share one pixel budget
        counts = [items.count for items, _ in inputs]
        parts = model.batches(sum(counts))
        chunks = [await job.run(self._embed_chunk, model, list(_pieces(inputs, part)), convert) for part in parts[:-1]]

        def last() -> list[np.ndarray] | T:
            chunks.append(self._embed_chunk(model, list(_pieces(inputs, parts[-1])), convert))
            embeddings = np.split(np.concatenate(chunks) if len(chunks) > 1 else chunks[0], np.cumsum(counts)[:-1])
            return then(*embeddings) if then else embeddings

        return await job.run(last)

    def _embed_chunk(self, model: FewShotModel, pieces: list[Piece],
                     convert: Callable[[list[Piece]], dict[str, np.ndarray]]) -> np.ndarray:
        with self.metrics.stage("decode", model.name):
            feeds = convert(pieces)
        with self.metrics.stage("embed", model.name):
            embeddings = model.embed_feeds(feeds)
        if not np.isfinite(embeddings).all():
            raise InvalidArgument(
                f"the {' and '.join(what for _, what, _ in pieces)} overflow the model: their embeddings are not "
                "finite numbers; send items preprocessed as GetModel says (pixels to [0, 1], then minus mean, "
                "divided by std)")
        return embeddings

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
        if not (np.isfinite(scores.probabilities).all() and np.isfinite(scores.known).all()):
            raise InvalidArgument("the scores overflowed (the embeddings are too large for the head); lower the "
                                  "learning rate or l2, or send items preprocessed as GetModel says")
        return scores

    def _head_and_score(self, model: FewShotModel, targets: np.ndarray, classes: int, method: str, distance: str,
                        adaptation: Adaptation, first: slice, support: np.ndarray,
                        queries: np.ndarray) -> tuple[np.ndarray, Head, Scores]:
        """The head, and the ``first`` queries scored in the same step (all of them for a small episode)."""
        head = self._head(model, support, targets, classes, method, distance, adaptation, queries)
        return queries, head, self._score(model, queries[first], head)

    async def _scores(self, job: Job, model: FewShotModel, queries: np.ndarray, head: Head, parts: list[slice],
                      first: Scores) -> Scores:
        """All the queries' scores: ``first``, the first part's, already scored with the embedding or the head,
        then one part per step (see FewShotModel.score_batches)."""
        scores = [first] + [await job.run(self._score, model, queries[part], head) for part in parts[1:]]
        if len(scores) == 1:
            return first
        return Scores(np.concatenate([s.probabilities for s in scores]), np.concatenate([s.known for s in scores]))

    # -- RPCs ---------------------------------------------------------------------------
    def _resolve(self, model: FewShotModel, request: SupportRequest, rpc: str) -> tuple[str, str, Adaptation,
                                                                                         tuple[str, ...], np.ndarray]:
        method = validation.method(request.method, model)
        label_request(model.name, method)
        distance = validation.distance(request.distance, model)
        adaptation = validation.adaptation(request.adaptation, method, model, self.limits)
        validation.require_items(request.items, "support.items", self.limits.max_support_items)
        validation.model_items(model, self.limits, (request.items, "support.items"))
        classes, targets = validation.class_index(request.labels, request.items.count, self.limits)
        self.metrics.support_items.labels(rpc).observe(request.items.count)
        return method, distance, adaptation, classes, targets

    def _queries(self, request: QueryRequest, model: FewShotModel, distance: str, classes: tuple[str, ...],
                 rpc: str) -> tuple[int, float]:
        """Check the query side, and that its answer can be sent; return the resolved top k and threshold."""
        validation.require_items(request.items, "queries", self.limits.max_query_items)
        validation.model_items(model, self.limits, (request.items, "queries"))
        self.metrics.query_items.labels(rpc).observe(request.items.count)
        top_k = validation.top_k(request.top_k, self.limits)
        count = request.items.count
        validation.response_fits(validation.classification_size(count, classes, top_k), self.max_response_bytes,
                                 f"{count} queries × {len(classes)} classes of scores, with the {min(top_k, len(classes))} "
                                 "best labels of each")
        return top_k, validation.rejection_threshold(request.rejection_threshold, model, distance)

    async def classify(self, request: SupportRequest, queries: QueryRequest) -> Classification:
        model = self.model(request.model, request.model_version)
        with self.metrics.inference(model.name, model.version, CLASSIFY):
            method, distance, adaptation, classes, targets = self._resolve(model, request, "Classify")
            require_kind(model.input, model.name, [(request.items, "support.items"), (queries.items, "queries")])
            top_k, threshold = self._queries(queries, model, distance, classes, "Classify")
            async with self._job(request.items, queries.items) as job:
                parts = model.score_batches(queries.items.count, len(classes))
                query, head, first = await self._embed(
                    job, model, (request.items, "support.items"), (queries.items, "queries"),
                    then=partial(self._head_and_score, model, targets, len(classes), method, distance, adaptation,
                                 parts[0]))
                scores = await self._scores(job, model, query, head, parts, first)
        return Classification(model.name, model.version, classes, scores.probabilities, scores.known, threshold,
                              method, distance, top_k)

    async def create_task(self, request: SupportRequest, ttl_seconds: int) -> Task:
        model = self.model(request.model, request.model_version)
        with self.metrics.inference(model.name, model.version, CLASSIFY):
            method, distance, adaptation, classes, targets = self._resolve(model, request, "CreateTask")
            validation.task_method(method)
            async with self._job(request.items) as job:
                head = await self._embed(job, model, (request.items, "support.items"), then=lambda support: self._head(
                    model, support, targets, len(classes), method, distance, adaptation))
        return await self.tasks.add(model, classes, head, method, distance, ttl_seconds)

    async def classify_task(self, task_id: str, queries: QueryRequest, rpc: str) -> Classification:
        task = await self.tasks.get(task_id)
        label_request(task.model.name, task.method)
        with self.metrics.inference(task.model.name, task.model.version, CLASSIFY):
            top_k, threshold = self._queries(queries, task.model, task.distance, task.classes, rpc)
            async with self._job(queries.items) as job:
                parts = task.model.score_batches(queries.items.count, len(task.classes))
                query, first = await self._embed(job, task.model, (queries.items, "queries"), then=lambda query: (
                    query, self._score(task.model, query[parts[0]], task.head)))
                scores = await self._scores(job, task.model, query, task.head, parts, first)
        return Classification(task.model.name, task.model.version, task.classes, scores.probabilities, scores.known,
                              threshold, task.method, task.distance, top_k)

    async def delete_task(self, task_id: str) -> None:
        await self.tasks.delete(task_id)

    async def embed(self, model_name: str, version: str, items: Items) -> tuple[FewShotModel, np.ndarray]:
        model = self.model(model_name, version)
        with self.metrics.inference(model.name, model.version, EMBED):
            validation.require_items(items, "items", self.limits.max_query_items)
            validation.model_items(model, self.limits, (items, "items"))
            validation.response_fits(4 * items.count * model.config.embedding_size + validation.RESPONSE_OVERHEAD,
                                     self.max_response_bytes,
                                     f"{items.count} embeddings of {model.config.embedding_size} floats")
            self.metrics.query_items.labels("Embed").observe(items.count)
            async with self._job(items) as job:
                (embeddings,) = await self._embed(job, model, (items, "items"))
        return model, embeddings


def _pieces(inputs: tuple[tuple[Items, str], ...], part: slice) -> Iterator[Piece]:
    """The slices of each input that fall in ``part`` of their concatenation."""
    offset = 0
    for items, what in inputs:
        start, stop = max(part.start, offset), min(part.stop, offset + items.count)
        if start < stop:
            yield items.part(slice(start - offset, stop - offset)), what, start - offset
        offset += items.count
