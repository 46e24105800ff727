"""Model-work steps handed to the model's worker threads in callers' fair turns.

A request's model work is a sequence of short steps (a chunk of items decoded
and embedded, the head, a part of the scoring); each waits here until one of
the ``--workers`` threads that run the model takes it.  A free worker takes
the next step of the waiting caller that has used the least model time so
far, measured in seconds of the steps it ran, and within one caller its steps
in arrival order.  That is start-time fair queueing over measured service: a
caller sending requests of thousands of images gets the same share of the
model as one sending five, so neither starves the other, and between two
callers a small request waits for at most one step of a big one.

The workers take steps themselves, the moment they finish the last one, so
the model never idles while steps wait (handing each slot back through the
event loop left it idle whenever the loop was busy with other calls).

A caller's record lives while it has requests in flight (:meth:`join` …
:meth:`leave`); one that comes back starts level with the least-served
caller in flight, so idle time earns no credit and costs no penalty.
Thread-safe: the event loop puts steps in, worker threads take them out.
"""
from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Generic, TypeVar

S = TypeVar("S")


class FairShare(Generic[S]):
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._used: dict[str, float] = {}  # model seconds of each caller with requests in flight
        self._requests: Counter[str] = Counter()
        self._waiting: dict[str, deque[S]] = {}
        self._closed = False

    def join(self, caller: str) -> None:
        """A request of ``caller`` enters; a caller new to the share starts level with the least served."""
        with self._lock:
            if not self._requests[caller]:
                self._used[caller] = min(self._used.values(), default=0.0)
            self._requests[caller] += 1

    def leave(self, caller: str) -> None:
        with self._lock:
            self._requests[caller] -= 1
            if not self._requests[caller]:
                del self._requests[caller], self._used[caller]

    def put(self, caller: str, step: S) -> None:
        """``step`` of ``caller`` waits for a worker."""
        with self._lock:
            self._waiting.setdefault(caller, deque()).append(step)
            self._lock.notify()

    def take(self) -> tuple[str, S] | None:
        """For a worker: the next step in fair turn and its caller, waiting for one; None once closed and
        nothing waits any more."""
        with self._lock:
            while not self._waiting:
                if self._closed:
                    return None
                self._lock.wait()
            caller = min(self._waiting, key=lambda c: self._used.get(c, 0.0))
            queue = self._waiting[caller]
            step = queue.popleft()
            if not queue:
                del self._waiting[caller]
            return caller, step

    def charge(self, caller: str, seconds: float) -> None:
        """A step of ``caller`` took ``seconds`` of model time."""
        with self._lock:
            if caller in self._used:
                self._used[caller] += seconds

    def close(self) -> None:
        """No more steps: workers drain what waits, then :meth:`take` answers None."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
