"""Tasks in Redis, shared by every replica: a ClassifyTask can land on any of them.

Each task is one Redis key holding its head (NumPy arrays, saved without
pickles) and what it was made from (model name and version, classes, method,
distance), with Redis's own expiry as its time to live.  Memory is bounded
the Redis way: give metalearn a database of its own with ``maxmemory`` and
``maxmemory-policy allkeys-lru``, and Redis evicts the least recently used
tasks.  A replica resolves a task's model version in its own repository, so
every replica should serve the same versions.

When Redis cannot be reached, task calls fail fast (a few seconds of socket
timeout at most) with ``UNAVAILABLE``, which clients may retry; the server's
health marks ``metalearn.v1.FewShotService`` NOT_SERVING until :meth:`healthy`
sees Redis again (app.py), and the task calls work again as soon as it does.
"""
from __future__ import annotations

import io
import json
import math
import secrets
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from metalearn_server.errors import NotFound, Unavailable, excerpt
from metalearn_server.execution.model import FewShotModel, Head
from metalearn_server.execution.repository import ModelRepository
from metalearn_server.scheduling.task_store import Task, TaskPolicy, require_task_id

PREFIX = "metalearn:task:"
#: Seconds to connect to Redis, and to wait for an answer, before a task call gives up with UNAVAILABLE.
CONNECT_TIMEOUT, ANSWER_TIMEOUT = 2.0, 5.0


def encode(task: Task) -> bytes:
    head = task.head
    meta = {"model": task.model.name, "version": task.model.version, "classes": list(task.classes),
            "method": task.method, "distance": task.distance, "temperature": head.temperature,
            "expires_at": task.expires_at, "adapted": head.adapted}
    arrays = {"weight": head.weight, "bias": head.bias, "shots": head.shots}
    if head.adapted:
        arrays.update(prototype_weight=head.prototype_weight, prototype_bias=head.prototype_bias)
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
    return buffer.getvalue()


def decode(task_id: str, data: bytes, repository: ModelRepository) -> Task:
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        meta = json.loads(str(arrays["meta"]))
        weight, bias = arrays["weight"], arrays["bias"]
        prototype = (arrays["prototype_weight"], arrays["prototype_bias"]) if meta["adapted"] else (weight, bias)
        shots = arrays["shots"] if "shots" in arrays.files else None
    try:
        model = repository.get(meta["model"], meta["version"])
    except NotFound:
        raise NotFound(f"task {excerpt(task_id)} was made with model {meta['model']} version {meta['version']}, which "
                       "this server does not serve (any more); create the task again") from None
    if shots is None:
        raise NotFound(f"task {excerpt(task_id)} was stored by an older server, without its classes' shot counts; "
                       "create the task again")
    head = Head(weight, bias, meta["distance"], meta["temperature"], *prototype, shots)
    return Task(task_id, model, tuple(meta["classes"]), head, meta["method"], meta["distance"], meta["expires_at"])


class RedisTaskStore:
    def __init__(self, url: str, repository: ModelRepository, default_ttl: float, max_ttl: float,
                 max_bytes: int) -> None:
        self.redis = redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=ANSWER_TIMEOUT)
        where = self.redis.connection_pool.connection_kwargs
        self.address = f"{where.get('host', '?')}:{where.get('port', '?')}"
        self.repository, self.policy = repository, TaskPolicy(default_ttl, max_ttl, max_bytes)
        self.count, self.nbytes = 0, 0  # refreshed by healthy(), for the metrics

    def __len__(self) -> int:
        return self.count

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """Redis out of reach is the server's passing trouble (UNAVAILABLE), not a bug (INTERNAL)."""
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            raise Unavailable(f"the task store (Redis at {self.address}) cannot be reached ({error}); task calls "
                              "fail until it is back: retry with backoff (Classify and Embed do not need it)") from None

    async def add(self, model: FewShotModel, classes: tuple[str, ...], head: Head, method: str, distance: str,
                  ttl_seconds: int) -> Task:
        self.policy.admit(head)
        ttl = self.policy.ttl(ttl_seconds)
        task = Task(secrets.token_urlsafe(16), model, classes, head, method, distance, time.time() + ttl)
        with self._reachable():
            await self.redis.set(PREFIX + task.task_id, encode(task), ex=max(1, math.ceil(ttl)))
        return task

    async def get(self, task_id: str) -> Task:
        require_task_id(task_id)
        with self._reachable():
            data = await self.redis.get(PREFIX + task_id)
        if data is None:
            raise NotFound(f"task {excerpt(task_id)} is not available: it expired, was evicted or deleted, or never "
                           "existed; create it again with CreateTask")
        return decode(task_id, data, self.repository)

    async def delete(self, task_id: str) -> None:
        with self._reachable():
            deleted = await self.redis.delete(PREFIX + task_id)
        if not deleted:
            await self.get(task_id)  # raises the NOT_FOUND that says so

    async def healthy(self) -> bool:
        """Whether Redis answers; on the way, refresh the live-task count and memory for the metrics."""
        try:
            with self._reachable():
                self.count = int(await self.redis.dbsize())
                self.nbytes = int((await self.redis.info("memory"))["used_memory"])
        except Unavailable:
            return False
        return True

    async def close(self) -> None:
        await self.redis.aclose()
