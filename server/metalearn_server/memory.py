"""Giving memory back after bursts.

glibc's allocator keeps freed memory for reuse: after a burst of large
requests the server's resident size would stay at the burst's peak.  Two
settings fix that where glibc is the allocator (elsewhere they are skipped):
a fixed mmap threshold, so every buffer of 128 kB or more (tensors, messages,
embeddings) is its own mapping, unmapped when freed, instead of the threshold
rising after each large free until such buffers stay in the heap; and a trim
of the heaps' free pages, which the server runs when it is idle.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def return_large_buffers() -> None:
    """Fix glibc's mmap threshold (see the module's docstring); call once at start-up."""
    if _LIBC is not None and not _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        log.warning("mallopt(M_MMAP_THRESHOLD) failed; freed memory may stay resident after bursts")


def trim(collect: bool = False) -> None:
    """Hand the heaps' free pages back to the system (cheap when there is little to give); with ``collect``,
    first free what only reference cycles still hold (a failed call's traceback can hold its request's arrays
    until Python's rarest collection runs)."""
    if collect:
        gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
