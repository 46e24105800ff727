"""Domain errors.  The core raises these; :mod:`metalearn_server.transport.interceptors`
maps each to its gRPC status in one place, so no business code touches gRPC.
"""
from __future__ import annotations


class MetalearnError(Exception):
    """Base class: the message is for the caller and says how to fix the request."""


class InvalidArgument(MetalearnError):
    """The request is malformed or inconsistent (INVALID_ARGUMENT)."""


class NotFound(MetalearnError):
    """An unknown model, version or task (NOT_FOUND)."""


class ResourceExhausted(MetalearnError):
    """A limit was hit (RESOURCE_EXHAUSTED)."""


class Unavailable(MetalearnError):
    """The server cannot take the request now (UNAVAILABLE)."""


class DeadlineExceeded(MetalearnError):
    """The caller's deadline passed before the work could start (DEADLINE_EXCEEDED)."""


#: How much of a caller's own string an error message repeats: enough to recognise it, never enough
#: to push the status past a client's metadata limit (16 kB by default) and turn it into another error.
EXCERPT_CHARACTERS = 64


def excerpt(value: str, limit: int = EXCERPT_CHARACTERS, quote: bool = True) -> str:
    """``value`` (in quotes, as ``repr`` writes it), cut to its first ``limit`` characters when longer, saying
    how long it was."""
    shown = repr(value[:limit]) if quote else value[:limit]
    return shown if len(value) <= limit else f"{shown}… ({len(value)} characters)"


class StartupError(Exception):
    """The server cannot start as configured; the message names the cause and the fix."""
