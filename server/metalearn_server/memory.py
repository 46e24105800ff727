"""Giving memory back after bursts.

glibc's allocator keeps freed memory for reuse: after a burst of large
requests the server's resident size would stay at the burst's peak.  Three
settings fix that where glibc is the allocator (elsewhere they are skipped):
a fixed mmap threshold, so every buffer of 4 MiB or more (a large request's
messages, tensors and embeddings) is its own mapping, unmapped when freed,
instead of the threshold rising after each large free until such buffers stay
in the heap; a high trim threshold, so the heaps keep what an ordinary request
frees for the next one; and a trim of the heaps' free pages, which the server
runs when it is idle.

Why not lower: at 128 kB every request's buffers (its message, a chunk's
embeddings) were mapped and unmapped each time, 1,400 page faults per
5-way 5-shot request and 2-4 ms of its 38 ms at concurrency 1; at 4 MiB
they are 20-60, and after a burst of 64 10 MB requests the idle server
holds 186 MB more than warm instead of 99 (tests/test_memory.py allows 400).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 64 << 20


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def return_large_buffers() -> None:
    """Fix glibc's mmap and trim thresholds (see the module's docstring); call once at start-up."""
    if _LIBC is None:
        return
    if not (_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and _LIBC.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        log.warning("mallopt(M_MMAP_THRESHOLD, M_TRIM_THRESHOLD) failed; freed memory may stay resident after bursts")


def trim(collect: bool = False) -> None:
    """Hand the heaps' free pages back to the system (cheap when there is little to give); with ``collect``,
    first free what only reference cycles still hold (a failed call's traceback can hold its request's arrays
    until Python's rarest collection runs)."""
    if collect:
        gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
