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
