"""TaskStore: time to live, least-recently-used eviction, and messages that say why a task is gone."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from metalearn_server.errors import InvalidArgument, NotFound, ResourceExhausted
from metalearn_server.execution.model import Head
from metalearn_server.scheduling.task_store import TaskStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


WEIGHT, BIAS = np.zeros((2, 4), np.float32), np.zeros(2, np.float32)
HEAD = Head(WEIGHT, BIAS, distance="euclidean", temperature=1.0, prototype_weight=WEIGHT, prototype_bias=BIAS,
            shots=np.ones(2, np.float32))


def make_store(max_tasks: int = 3) -> tuple[TaskStore, Clock, list[str]]:
    clock, evictions = Clock(), []
    store = TaskStore(max_tasks, default_ttl=60, max_ttl=600, clock=clock, on_evict=evictions.append)
    return store, clock, evictions


def add(store: TaskStore, ttl: int = 0) -> str:
    return asyncio.run(store.add(model=None, classes=("a", "b"), head=HEAD, method="prototype", distance="euclidean",
                                 ttl_seconds=ttl)).task_id


def get(store: TaskStore, task_id: str):
    return asyncio.run(store.get(task_id))


def test_expiry_uses_the_requested_ttl_capped_by_the_maximum():
    store, clock, evictions = make_store()
    short, default, capped = add(store, ttl=10), add(store), add(store, ttl=10_000)
    clock.now += 11
    with pytest.raises(NotFound, match="it expired"):
        get(store, short)
    assert get(store, default).task_id == default
    clock.now += 50
    with pytest.raises(NotFound, match="expired"):
        get(store, default)
    clock.now += 600 - 61 - 1
    assert get(store, capped).task_id == capped
    clock.now += 1
    assert len(store) == 0
    assert evictions == ["expired"] * 3


def test_least_recently_used_task_is_evicted_at_capacity():
    store, _, evictions = make_store(max_tasks=2)
    first, second = add(store), add(store)
    get(store, first)  # now `second` is the least recently used
    third = add(store)
    with pytest.raises(NotFound, match="evicted to make room"):
        get(store, second)
    assert {get(store, first).task_id, get(store, third).task_id} == {first, third}
    assert evictions == ["capacity"]


def test_delete_and_unknown_ids():
    store, _, evictions = make_store()
    task = add(store)
    asyncio.run(store.delete(task))
    with pytest.raises(NotFound, match="was deleted"):
        get(store, task)
    with pytest.raises(NotFound, match="no such task"):
        get(store, "never-created")
    with pytest.raises(InvalidArgument):
        get(store, "")
    assert evictions == []


def test_churn_keeps_the_bookkeeping_bounded():
    store, clock, _ = make_store(max_tasks=5)
    for _ in range(1000):
        add(store, ttl=600)
        clock.now += 0.01
    assert len(store) == 5
    assert len(store._deadlines) <= 4 * 5 + 1 and len(store._gone) <= 4 * 5


def test_bytes_bound_evicts_least_recently_used_and_refuses_oversized_tasks():
    clock, evictions = Clock(), []
    store = TaskStore(100, default_ttl=60, max_ttl=600, max_bytes=3 * HEAD.nbytes, clock=clock,
                      on_evict=evictions.append)
    first, second, third = add(store), add(store), add(store)
    assert store.nbytes == 3 * HEAD.nbytes
    get(store, first)
    add(store)  # over the byte bound: `second`, the least recently used, goes
    with pytest.raises(NotFound, match="evicted"):
        get(store, second)
    assert get(store, third) and store.nbytes == 3 * HEAD.nbytes and evictions == ["capacity"]
    big = Head(np.zeros((64, 64), np.float32), np.zeros(64, np.float32), "euclidean", 1.0,
               np.zeros((64, 64), np.float32), np.zeros(64, np.float32), np.ones(64, np.float32))
    with pytest.raises(ResourceExhausted, match="use fewer classes"):
        asyncio.run(store.add(model=None, classes=("a", "b"), head=big, method="finetune", distance="euclidean",
                              ttl_seconds=0))
