"""Running a request's model work: admitted, in fair turns, stoppable between steps and inside them.

The data plane opens a :class:`Job` per request (:meth:`ModelWork.job`) and
runs each step of the request through :meth:`Job.run`: a chunk of items to
embed, then the head.  Each step

1. waits for a model-work slot in its caller's fair turn (:mod:`fair_share`);
2. is dropped before it starts if the caller's deadline has passed
   (``DEADLINE_EXCEEDED``) or the call was cancelled;
3. runs in a worker thread (ONNX Runtime releases the GIL, so the event loop
   carrying gRPC never blocks on a model), with ONNX Runtime run options of
   its own, so that a call cancelled meanwhile (the caller went away, its
   deadline passed, the server is shutting down) stops its ONNX Runtime calls
   at once (``RunOptions.terminate``) instead of running to completion.

The slot is handed back when the thread is really done, not when the
awaiting coroutine gives up, so cancelled work never overlaps the next step.
"""
from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
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
        self.waited = 0.0  # seconds spent waiting for slots, over all steps
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
        share, loop = self._work.share, asyncio.get_running_loop()
        asked = time.monotonic()
        await share.acquire(self.caller)
        self.waited += time.monotonic() - asked
        if self.cancelled or (self.deadline is not None and time.monotonic() >= self.deadline):
            share.release(self.caller, 0.0)
            raise DeadlineExceeded("the request's deadline passed while it waited for the model; the rest of its "
                                   "work was dropped; raise the deadline or lower the load")
        started = time.perf_counter()

        def done(_: Future) -> None:
            seconds = time.perf_counter() - started
            try:
                loop.call_soon_threadsafe(share.release, self.caller, seconds)
            except RuntimeError:  # the loop closed at shutdown; nobody waits for the slot any more
                pass

        # The step sees the caller's context (as with asyncio.to_thread): what it measures goes to its request.
        future = self._work.executor.submit(contextvars.copy_context().run, self._in_thread, step, args)
        future.add_done_callback(done)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            self.cancel()
            raise

    def _in_thread(self, step: Callable[..., T], args: tuple) -> T:
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


class ModelWork:
    """The model executor, its admission budgets and its fair share of slots."""

    def __init__(self, workers: int, budget: Budget) -> None:
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model")
        self.admission = Admission(budget)
        self.share = FairShare(workers)
        self._jobs: set[Job] = set()

    @property
    def workers(self) -> int:
        return self.share.slots

    @property
    def idle(self) -> bool:
        return not self._jobs

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
        """Stop every job's model work and the threads (at shutdown, once gRPC's grace has passed)."""
        for job in list(self._jobs):
            job.cancel()
        self.executor.shutdown(wait=True, cancel_futures=True)
