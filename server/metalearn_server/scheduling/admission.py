"""Admission control: how much work the server holds at once, counted three ways.

A request is admitted only while the requests in flight (running or waiting
for the model) stay within

* ``max_requests``: a count, so a queue never grows into latency nobody wants;
* ``max_items``: support and query items, the measure of model work and of the
  memory a request holds while it waits (its input, then its embeddings), so a
  flood of huge requests is turned away where a count alone would let 64 of
  them queue for minutes;
* ``max_bytes``: the bytes of the requests' items as received, which stay in
  memory until each request is answered.

Beyond any of them a request is refused at once with ``RESOURCE_EXHAUSTED``
(the message says which budget and how to recover) instead of joining a queue.

Items and bytes are admitted with headroom: a request gets in only while what
is in flight leaves room for it twice, once for itself and once for whoever
comes next.  So big requests can never take the last of a budget: when the
server is full of them, the next big one is refused while a small one still
finds room, and the small one is not starved by them.  (So one request may
use at most half of each budget.)  Within the budgets,
:mod:`~metalearn_server.scheduling.fair_share` decides who runs next.
"""
from __future__ import annotations

from dataclasses import dataclass

from metalearn_server.errors import ResourceExhausted


@dataclass(frozen=True)
class Budget:
    max_requests: int
    max_items: int
    max_bytes: int


class Admission:
    """Counts what admitted requests hold; lives on the event loop (not thread-safe)."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.requests = self.items = self.bytes = 0

    def admit(self, items: int, nbytes: int) -> None:
        """Take the request's share of every budget, or refuse it; :meth:`release` gives it back."""
        self._check(items, nbytes)
        self.requests, self.items, self.bytes = self.requests + 1, self.items + items, self.bytes + nbytes

    def check_message(self, nbytes: int) -> None:
        """Refuse a request message of ``nbytes`` that could not be admitted now, before it is even parsed
        (the transport asks, so that a burst of large messages is turned away without a copy of each)."""
        self._check(0, nbytes)

    def _check(self, items: int, nbytes: int) -> None:
        budget = self.budget
        if 2 * items > budget.max_items or 2 * nbytes > budget.max_bytes:
            raise ResourceExhausted(
                f"this request holds {items} items ({nbytes} bytes), more than the server admits in one request "
                f"(half of --max-inflight-items {budget.max_items} and of --max-inflight-bytes "
                f"{budget.max_bytes}); split it into smaller requests")
        if self.requests >= budget.max_requests:
            held = f"{self.requests} requests in flight"
        elif self.items + 2 * items > budget.max_items:
            held = f"{self.items} of its {budget.max_items} items in flight, too few left for {items} more and room after"
        elif self.bytes + 2 * nbytes > budget.max_bytes:
            held = f"{self.bytes} of its {budget.max_bytes} bytes in flight, too few left for {nbytes} more and room after"
        else:
            return
        raise ResourceExhausted(f"the server is at capacity ({held}); retry with backoff, send smaller "
                                "requests or fewer at once")

    def release(self, items: int, nbytes: int) -> None:
        self.requests, self.items, self.bytes = self.requests - 1, self.items - items, self.bytes - nbytes
