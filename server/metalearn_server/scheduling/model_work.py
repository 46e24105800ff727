"""Running a request's model work: admitted, in fair turns, stoppable between steps and inside them.

The data plane opens a :class:`Job` per request (:meth:`ModelWork.job`) and
runs each step of the request through :meth:`Job.run`: a chunk of items to
embed, the head, a part of the scoring.  Each step

1. waits for one of the model's worker threads in its caller's fair turn
   (:mod:`fair_share`);
2. is dropped before it starts if the caller's deadline has passed
   (``DEADLINE_EXCEEDED``) or the call was cancelled;
3. runs in that worker thread (ONNX Runtime releases the GIL, so the event
   loop carrying gRPC never blocks on a model), in the request's context (what
   it measures goes to its request) and with ONNX Runtime run options of its
   own, so that a call cancelled meanwhile (the caller went away, its deadline
   passed, the server is shutting down) stops its ONNX Runtime calls at once
   (``RunOptions.terminate``) instead of running to completion.

A worker is busy until its step is really done, not until the awaiting
coroutine gives up, so cancelled work never overlaps the next step.
"""
from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, TypeVar

import onnxruntime as ort

from metalearn_server.errors import DeadlineExceeded
from metalearn_server.execution import runtime
from metalearn_server.scheduling import call
from metalearn_server.scheduling.admission import Admission, Budget
from metalearn_server.scheduling.fair_share import FairShare

T = TypeVar("T")


class Job:
    """One admitted request's model work."""

    def __init__(self, work: "ModelWork", caller: str) -> None:
        self._work, self.caller = work, caller
        self.deadline = call.deadline.get()
        self.waited = 0.0  # seconds its steps spent waiting for a worker
        self.cancelled = False
        self._running: set[ort.RunOptions] = set()
        self._lock = threading.Lock()

    def cancel(self) -> None:
        """Stop this job's ONNX Runtime calls now and refuse its further steps."""
        with self._lock:
            self.cancelled = True
            for options in self._running:
                options.terminate = True

    async def run(self, step: Callable[..., T], *args: object) -> T:
        """``step(*args)`` in a worker thread, in this request's fair turn."""
        waiting = _Step(self, step, args)
        self._work.share.put(self.caller, waiting)
        try:
            return await waiting.future
        except asyncio.CancelledError:
            self.cancel()
            raise

    def in_thread(self, step: Callable[..., T], args: tuple) -> T:
        options = ort.RunOptions()
        with self._lock:
            if self.cancelled:
                options.terminate = True
            self._running.add(options)
        token = runtime.run_options.set(options)
        try:
            return step(*args)
        finally:
            runtime.run_options.reset(token)
            with self._lock:
                self._running.discard(options)


class _Step:
    """A step waiting for a worker, and the future its request awaits."""

    def __init__(self, job: Job, step: Callable[..., object], args: tuple) -> None:
        self.job, self.step, self.args = job, step, args
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future = self.loop.create_future()
        self.context = contextvars.copy_context()
        self.queued = time.monotonic()

    def run(self) -> float:
        """Run in a worker thread and settle the future; the model seconds it took."""
        job = self.job
        job.waited += time.monotonic() - self.queued
        if job.cancelled or (job.deadline is not None and time.monotonic() >= job.deadline):
            self._settle(None, DeadlineExceeded(
                "the request's deadline passed while it waited for the model; the rest of its work was dropped; "
                "raise the deadline or lower the load"))
            return 0.0
        started = time.perf_counter()
        try:
            result, error = self.context.run(job.in_thread, self.step, self.args), None
        except Exception as failure:  # the request's error, raised where it awaits
            result, error = None, failure
        self._settle(result, error)
        return time.perf_counter() - started

    def _settle(self, result: object, error: Exception | None) -> None:
        def settle() -> None:
            if self.future.done():  # the request went away meanwhile
                return
            if error is None:
                self.future.set_result(result)
            else:
                self.future.set_exception(error)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop closed at shutdown; nobody waits any more
            pass


class ModelWork:
    """The model's worker threads, its admission budgets and the fair share of the workers' time."""

    def __init__(self, workers: int, budget: Budget) -> None:
        self.workers = workers
        self.admission = Admission(budget)
        self.share: FairShare[_Step] = FairShare()
        self._jobs: set[Job] = set()
        self._threads = [threading.Thread(target=self._serve, name=f"model-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    @property
    def idle(self) -> bool:
        return not self._jobs

    def _serve(self) -> None:
        while (taken := self.share.take()) is not None:
            caller, step = taken
            self.share.charge(caller, step.run())

    @asynccontextmanager
    async def job(self, items: int, nbytes: int) -> AsyncIterator[Job]:
        """Admit a request of ``items`` items and ``nbytes`` bytes, or refuse it (RESOURCE_EXHAUSTED)."""
        self.admission.admit(items, nbytes)
        job = Job(self, call.caller.get())
        self.share.join(job.caller)
        self._jobs.add(job)
        try:
            yield job
        finally:
            self._jobs.discard(job)
            self.share.leave(job.caller)
            self.admission.release(items, nbytes)

    def close(self) -> None:
        """Stop every job's model work and the workers (at shutdown, once gRPC's grace has passed)."""
        for job in list(self._jobs):
            job.cancel()
        self.share.close()
        for thread in self._threads:
            thread.join()
