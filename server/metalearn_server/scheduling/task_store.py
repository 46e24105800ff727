"""Registered tasks: a support set embedded (and adapted) once, then queried many times.

The store is bounded by task count and by the bytes of the tasks' heads, and
expires tasks after their time to live; past either bound the least recently
used task is evicted.  A task that is gone
gives ``NOT_FOUND`` with a message that says why, if the store still knows.
"""
from __future__ import annotations

import heapq
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from metalearn_server.errors import InvalidArgument, NotFound, ResourceExhausted, excerpt
from metalearn_server.execution.model import FewShotModel, Head


@dataclass(frozen=True)
class Task:
    task_id: str
    model: FewShotModel
    classes: tuple[str, ...]
    head: Head
    method: str
    distance: str
    expires_at: float  # time.time() seconds


@dataclass(frozen=True)
class TaskPolicy:
    """What every task store enforces, wherever it keeps tasks."""

    default_ttl: float
    max_ttl: float
    max_bytes: int

    def ttl(self, requested_seconds: int) -> float:
        """The requested time to live capped by the maximum; 0 asks for the default."""
        return min(float(requested_seconds), self.max_ttl) if requested_seconds else self.default_ttl

    def admit(self, head: Head) -> None:
        if head.nbytes > self.max_bytes:
            raise ResourceExhausted(f"this task needs {head.nbytes} bytes, more than the task store's "
                                    f"{self.max_bytes}; use fewer classes")


def require_task_id(task_id: str) -> None:
    if not task_id:
        raise InvalidArgument("task_id is empty; pass the task_id that CreateTask returned")


class TaskStore:
    """In-process task store with TTL and LRU eviction (the default).

    ``on_evict`` is told the reason ("expired" or "capacity") of each task
    dropped, for the metrics.  Not thread-safe: it lives on the event loop.
    Its methods are coroutines only to share an interface with
    :class:`~metalearn_server.scheduling.redis_task_store.RedisTaskStore`.
    """

    def __init__(self, max_tasks: int, default_ttl: float, max_ttl: float, max_bytes: int = 1 << 30,
                 clock: Callable[[], float] = time.time,
                 on_evict: Callable[[str], None] = lambda reason: None) -> None:
        self.max_tasks, self.policy = max_tasks, TaskPolicy(default_ttl, max_ttl, max_bytes)
        self.nbytes = 0
        self.clock, self.on_evict = clock, on_evict
        self._tasks: OrderedDict[str, Task] = OrderedDict()  # least recently used first
        self._deadlines: list[tuple[float, str]] = []  # heap of (expires_at, task_id)
        # Ids of recently dropped tasks, to tell "expired" from "never existed".
        self._gone: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._tasks)

    async def add(self, model: FewShotModel, classes: tuple[str, ...], head: Head, method: str, distance: str,
                  ttl_seconds: int) -> Task:
        self.policy.admit(head)
        self._expire()
        while self._tasks and (len(self._tasks) >= self.max_tasks
                               or self.nbytes + head.nbytes > self.policy.max_bytes):
            self._drop(next(iter(self._tasks)), "capacity")
        task = Task(
            task_id=secrets.token_urlsafe(16), model=model, classes=classes, head=head, method=method,
            distance=distance, expires_at=self.clock() + self.policy.ttl(ttl_seconds),
        )
        self._tasks[task.task_id] = task
        self.nbytes += head.nbytes
        heapq.heappush(self._deadlines, (task.expires_at, task.task_id))
        return task

    async def get(self, task_id: str) -> Task:
        return self._get(task_id)

    def _get(self, task_id: str) -> Task:
        require_task_id(task_id)
        self._expire()
        task = self._tasks.get(task_id)
        if task is None:
            reason = self._gone.get(task_id)
            why = {"expired": "it expired", "capacity": "it was evicted to make room for newer tasks",
                   "deleted": "it was deleted"}.get(reason, "no such task was created on this server")
            raise NotFound(f"task {excerpt(task_id)} is not available: {why}; create it again with CreateTask")
        self._tasks.move_to_end(task_id)
        return task

    async def delete(self, task_id: str) -> None:
        self._get(task_id)
        self._drop(task_id, "deleted")

    async def healthy(self) -> bool:
        """Always: the tasks live in this process."""
        return True

    async def close(self) -> None:
        """Nothing to close: the tasks go with the process."""

    def _expire(self) -> None:
        now = self.clock()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, task_id = heapq.heappop(self._deadlines)
            if task_id in self._tasks:
                self._drop(task_id, "expired")

    def _drop(self, task_id: str, reason: str) -> None:
        self.nbytes -= self._tasks.pop(task_id).head.nbytes  # its heap entry is skipped when it comes due
        self._gone[task_id] = reason
        while len(self._gone) > 4 * self.max_tasks:
            self._gone.popitem(last=False)
        if len(self._deadlines) > 4 * self.max_tasks:  # compact the heap's stale entries
            self._deadlines = [(t.expires_at, t.task_id) for t in self._tasks.values()]
            heapq.heapify(self._deadlines)
        if reason != "deleted":
            self.on_evict(reason)
