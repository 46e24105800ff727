"""What the transport knows of the call being served, for the layers below it.

The gRPC interceptor sets these per call; the scheduler reads them, so the
data plane never passes them along by hand.
"""
from __future__ import annotations

import contextvars

#: The call's deadline (``time.monotonic()`` seconds), or None when the caller set none.
deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)

#: Who is calling, for fair sharing of the model between callers: the bearer token's fingerprint where
#: calls carry one, else the connection (peer address and port).
caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")
