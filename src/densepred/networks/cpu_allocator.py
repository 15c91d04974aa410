"""Process settings that make CPU inference fast.

Dense prediction allocates and frees activations of hundreds of megabytes per layer.
glibc's malloc serves such blocks with fresh ``mmap`` pages and returns them on free, so
every layer pays for page faults and zeroing again (docs/BENCHMARKS.md shows what this
cost on m36). The same advice is behind the jemalloc/tcmalloc recommendations for PyTorch on CPUs.
``tune_cpu_allocator`` asks glibc to keep freed memory (the process's resident memory then
stays at its high-water mark). Set ``DENSEPRED_NO_MALLOC_TUNING=1`` to leave malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4
_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Keep freed heap memory for reuse (glibc only, once per process); True if applied."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("DENSEPRED_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    # No mmap for large blocks (a threshold cannot exceed 2 GiB, and a 2 GiB activation map
    # mmapped afresh for every layer paid its page faults every time) and no trimming (-1).
    _tuned = all(mallopt(option, value) == 1 for option, value in (
        (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1), (M_TOP_PAD, 256 * 2**20)))
    return _tuned


def release_free_memory() -> bool:
    """Return the heap memory malloc keeps for reuse to the system (glibc ``malloc_trim``)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
