"""Model-work slots shared fairly between callers.

A request's model work is a sequence of short steps (a chunk of items
decoded and embedded, then the head); each step takes one of ``slots`` slots
(the ``--workers`` that may run the model at once).  When a slot frees, it goes
to the waiting caller that has used the least model time so far, measured in
seconds of the steps it ran, and within one caller to its steps in arrival
order.  That is start-time fair queueing over measured service: a caller
sending requests of thousands of images gets the same share of the model as
one sending five, so neither starves the other, and between two callers a
small request waits for at most one step of a big one.

A caller's record lives while it has requests in flight (:meth:`join` …
:meth:`leave`); one that comes back starts level with the least-served
caller in flight, so idle time earns no credit and costs no penalty.
Not thread-safe: it lives on the event loop, and worker threads hand slots
back through ``loop.call_soon_threadsafe``.
"""
from __future__ import annotations

import asyncio
from collections import Counter, deque


class FairShare:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.free = slots
        self._used: dict[str, float] = {}  # model seconds of each caller with requests in flight
        self._requests: Counter[str] = Counter()
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    def join(self, caller: str) -> None:
        """A request of ``caller`` enters; a caller new to the share starts level with the least served."""
        if not self._requests[caller]:
            self._used[caller] = min(self._used.values(), default=0.0)
        self._requests[caller] += 1

    def leave(self, caller: str) -> None:
        self._requests[caller] -= 1
        if not self._requests[caller]:
            del self._requests[caller], self._used[caller]

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    async def acquire(self, caller: str) -> None:
        """Wait for a slot; :meth:`release` must follow."""
        if self.free and not self._waiting:
            self.free -= 1
            return
        turn = asyncio.get_running_loop().create_future()
        queue = self._waiting.setdefault(caller, deque())
        queue.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # granted just as the caller went away: pass it on
                self._hand_over()
            elif turn in queue:  # (a hand-over may already have skipped and dropped it)
                queue.remove(turn)
                if not queue and self._waiting.get(caller) is queue:
                    del self._waiting[caller]
            raise

    def release(self, caller: str, seconds: float) -> None:
        """A step of ``caller`` that took ``seconds`` is done: charge it and hand the slot on."""
        if caller in self._used:
            self._used[caller] += seconds
        self._hand_over()

    def _hand_over(self) -> None:
        while self._waiting:
            caller = min(self._waiting, key=lambda c: self._used.get(c, 0.0))
            queue = self._waiting[caller]
            turn = queue.popleft()
            if not queue:
                del self._waiting[caller]
            if not turn.done():
                turn.set_result(None)
                return
        self.free += 1
