"""Admission control: bounded model work and a bounded queue, with deadlines honoured.

At most ``max_concurrent`` requests run models at once and at most
``max_queued`` wait for a turn; a request beyond both is refused at once with
``RESOURCE_EXHAUSTED`` rather than joining an unbounded queue whose latency
nobody wants.  A request whose deadline passes while it waits is dropped
before any model work (``DEADLINE_EXCEEDED``); one whose caller cancels is
dropped by asyncio's cancellation of the waiting coroutine.
"""
from __future__ import annotations

import asyncio
import contextvars
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

from metalearn_server.errors import DeadlineExceeded, ResourceExhausted

#: The current request's deadline (``time.monotonic()`` seconds), set by the transport.
request_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("request_deadline", default=None)


class Admission:
    def __init__(self, max_concurrent: int, max_queued: int) -> None:
        self.max_concurrent, self.max_queued = max_concurrent, max_queued
        self._slots = asyncio.Semaphore(max_concurrent)
        self.queued = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold one of the model-work slots; yields the seconds spent waiting for it."""
        if self._slots.locked() and self.queued >= self.max_queued:
            raise ResourceExhausted(
                f"the server is at capacity ({self.max_concurrent} requests running, {self.queued} queued); "
                "retry with backoff or send fewer concurrent requests")
        started = time.monotonic()
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        try:
            deadline = request_deadline.get()
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded("the request's deadline passed while it waited for the model; "
                                       "no work was done; raise the deadline or lower the load")
            yield time.monotonic() - started
        finally:
            self._slots.release()
