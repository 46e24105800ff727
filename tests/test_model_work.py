"""The model work scheduler on its own: a request's steps, fair turns between callers, and the event loop."""
from __future__ import annotations

import asyncio
import threading
import time

from metalearn_server.scheduling import call
from metalearn_server.scheduling.admission import Budget
from metalearn_server.scheduling.model_work import ModelWork

BUDGET = Budget(max_requests=8, max_items=1000, max_bytes=1 << 20)


async def _request(work: ModelWork, caller: str, steps: list) -> object:
    call.caller.set(caller)
    async with work.job(1, 1) as job:
        return await job.run(*steps)


def test_a_requests_steps_run_one_after_another_without_the_event_loop():
    """Each step of a run starts once the last is done, in the worker, while the event loop is not running
    (a busy loop must not hold up the model between a request's steps); the last step's result comes back."""
    work = ModelWork(1, BUDGET)
    ran: list[tuple[str, float, float]] = []
    loop_blocked = threading.Event()

    def step(name: str, seconds: float) -> str:
        started = time.monotonic()
        if name == "first":
            assert loop_blocked.wait(5)
        time.sleep(seconds)
        ran.append((name, started, time.monotonic()))
        return name

    async def main() -> object:
        request = asyncio.ensure_future(_request(work, "a", [lambda: step("first", 0.0), lambda: step("second", 0.05),
                                                             lambda: step("last", 0.0)]))
        await asyncio.sleep(0.01)  # the request's steps are queued
        loop_blocked.set()
        time.sleep(0.5)  # the event loop does nothing else for half a second
        done_while_blocked = [name for name, *_ in ran]
        return await request, done_while_blocked

    try:
        result, done_while_blocked = asyncio.run(main())
    finally:
        work.close()
    assert result == "last"
    assert done_while_blocked == ["first", "second", "last"]
    assert all(previous[2] <= following[1] for previous, following in zip(ran, ran[1:]))


def test_another_callers_step_waits_for_one_step_of_a_long_request_not_for_all_of_it():
    """Steps that follow each other in the worker still take their turns: a caller arriving while a request
    of many steps runs gets the model after one of those steps."""
    work = ModelWork(1, BUDGET)
    order: list[str] = []
    started = threading.Event()

    def step(name: str) -> None:
        started.set()
        time.sleep(0.02)
        order.append(name)

    async def main() -> None:
        long = asyncio.ensure_future(_request(work, "long", [lambda i=i: step(f"long-{i}") for i in range(6)]))
        await asyncio.get_running_loop().run_in_executor(None, started.wait)
        await asyncio.gather(long, _request(work, "short", [lambda: step("short")]))

    try:
        asyncio.run(main())
    finally:
        work.close()
    assert order.index("short") <= 2, order
    assert [name for name in order if name != "short"] == [f"long-{i}" for i in range(6)]


def test_a_failing_step_ends_the_run_and_its_error_reaches_the_caller():
    work = ModelWork(1, BUDGET)
    ran: list[str] = []

    def fail() -> None:
        ran.append("fail")
        raise ValueError("broken step")

    async def main() -> None:
        await _request(work, "a", [lambda: ran.append("first"), fail, lambda: ran.append("never")])

    try:
        try:
            asyncio.run(main())
        except ValueError as error:
            assert str(error) == "broken step"
        else:
            raise AssertionError("the step's error was not raised")
    finally:
        work.close()
    assert ran == ["first", "fail"]
