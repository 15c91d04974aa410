"""The process and its machine: memory still available (cgroup-aware), resident memory, and
glibc malloc settings for fast, bounded CPU inference.

Part of the foundation every layer may use: it imports nothing else of densepred.

Dense prediction allocates and frees activations of hundreds of megabytes per layer.
glibc's malloc serves such blocks with fresh ``mmap`` pages and returns them on free, so
every layer pays for page faults and zeroing again (docs/BENCHMARKS.md shows what this
cost on m36). The same advice is behind the jemalloc/tcmalloc recommendations for PyTorch on
CPUs. :func:`tune_cpu_allocator` asks glibc to keep freed memory (the process's resident
memory then stays at its high-water mark) in one arena shared by all threads, so the reader,
compute and writer threads reuse each other's freed blocks. ``import densepred`` applies it
before any library starts a thread; set ``DENSEPRED_NO_MALLOC_TUNING=1`` to leave malloc alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import mmap
import os
import re
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from .cgroups import affinity_cores, memory_room, quota_cores
from .errors import DensePredError


def available_ram() -> int:
    """Bytes of memory this process can still take: the system's available memory, or less when
    a cgroup (Slurm, Kubernetes, systemd) limits the process or a group above it, so a job is not
    OOM-killed (:mod:`densepred.cgroups`)."""
    available = _meminfo_available()
    room = memory_room()
    return available if room is None else min(available, room)


def _meminfo_available() -> int:
    available = proc_values("/proc/meminfo").get("MemAvailable")
    return available if available is not None else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def proc_values(path: str = "/proc/self/status") -> dict[str, int]:
    """The ``key: N kB`` lines of a /proc file (``status``, ``meminfo``) in bytes; empty where unreadable."""
    values = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                if rest.strip().endswith("kB"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def available_cores() -> int:
    """CPU cores this process may keep busy: its affinity mask (a Slurm allocation, ``taskset``),
    or fewer when a cgroup CPU quota (Kubernetes, ``docker --cpus``) allows less time."""
    quota = quota_cores()
    return affinity_cores() if quota is None else max(1, min(affinity_cores(), quota))


def resident_bytes() -> int:
    """This process's resident memory now (VmRSS), 0 where it cannot be read."""
    return proc_values().get("VmRSS", 0)


M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -3, -4, -8
_tuned: bool | None = None

KEEP_FREED = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1), (M_TOP_PAD, 256 * 2**20))
# glibc's defaults, but a fixed mmap threshold of 1 MiB: on MONAI's BasicUNet blend, 1.50 GiB
# peak against 1.61 at 32 MiB (where glibc's dynamic threshold ends), for 7% more time
RETURN_FREED = ((M_MMAP_THRESHOLD, 2**20), (M_MMAP_MAX, 65536), (M_TRIM_THRESHOLD, 128 * 2**10),
                (M_TOP_PAD, 128 * 2**10))


def request_huge_pages() -> bool:
    """Ask PyTorch's CPU allocator to back blocks of 2 MiB and more with transparent huge pages
    (``THP_MEM_ALLOC_ENABLE=1``, Linux); True if the variable is now set to ask for them.

    PyTorch reads the variable at its first CPU allocation, so this takes effect only when
    densepred is imported before any tensor is made; a value the user set is kept (``0`` opts
    out). A returned map faults in 512 times fewer pages: MONAI's BasicUNet ran a 64x128x128
    window 1.2x faster so, in the same memory (docs/BENCHMARKS.md). Where the kernel's THP
    mode is ``never`` the advice is ignored.
    """
    if os.environ.get("DENSEPRED_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return False
    return os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1") == "1"


def huge_pages_requested() -> bool:
    """Whether PyTorch's allocator in this process asks for huge pages: it then aligns blocks of
    2 MiB and more to the page, where it otherwise aligns to 64 bytes (three probes, so a
    64-byte-aligned block on a page boundary by chance does not count)."""
    import torch

    probes = [torch.empty(HUGE_PAGE // 4 + 1, dtype=torch.float32) for _ in range(3)]
    return all(probe.data_ptr() % mmap.PAGESIZE == 0 for probe in probes)


HUGE_PAGE = 2 * 2**20


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
    # One arena: the reader, compute and writer threads then reuse each other's freed
    # blocks; with an arena per thread each kept its own high-water mark (measured: 1.52
    # against 0.99 GB peak on a light net, docs/BENCHMARKS.md).
    _tuned = all(mallopt(option, value) == 1 for option, value in (*KEEP_FREED, (M_ARENA_MAX, 1)))
    return _tuned


@contextlib.contextmanager
def large_blocks_returned(returned: bool = True) -> Iterator[None]:
    """Within the block, malloc serves large blocks with their own maps and returns them on
    free, as glibc does by default (a no-op unless :func:`tune_cpu_allocator` applied). With
    ``returned=False`` the heap keeps them for reuse within the block, as elsewhere, and
    returns what is free at its end, so a long-lived process does not hold a run's maps.

    For models written elsewhere: a U-Net's forward allocates maps of many sizes in an order
    that fragments a heap which never returns memory (MONAI's BasicUNet peaked 0.4-0.8 GiB
    higher so, docs/BENCHMARKS.md); densepred's own nets allocate layer by layer and keep the
    tuning.
    """
    if not _tuned:
        yield
        return
    if not returned:
        try:
            yield
        finally:
            release_free_memory()  # the windows' maps, kept for reuse while they ran
        return
    mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    for option, value in RETURN_FREED:
        mallopt(option, value)
    try:
        yield
    finally:
        for option, value in KEEP_FREED:
            mallopt(option, value)


def reset_peak_resident() -> bool:
    """Start the process's peak resident set (``VmHWM``) afresh from its current one; False
    where the system cannot (no ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def release_free_memory() -> bool:
    """Return the heap memory malloc keeps for reuse to the system (glibc ``malloc_trim``)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


def mapped_zeros(shape: Sequence[int], dtype: np.dtype | type = np.float32) -> np.ndarray:
    """A zero-filled array in its own anonymous memory map, outside malloc's heap.

    For large arrays that outlive many forward passes (a result held whole): allocated on the
    heap between two forwards, such an array splits the space freed activations left, and
    the next forward's large maps no longer fit in it, so the heap grows (with the settings
    of :func:`tune_cpu_allocator` it never shrinks). The map is returned to the system when
    the array is freed.
    """
    dtype = np.dtype(dtype)
    count = math.prod(int(n) for n in shape)
    if count == 0:
        return np.zeros(tuple(shape), dtype)
    buffer = mmap.mmap(-1, count * dtype.itemsize)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buffer.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(buffer, dtype, count).reshape(tuple(shape))


SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
              "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_size(text: str, option: str) -> int:
    """``"8GiB"``, ``"500MB"``, ``"2e9"`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in SIZE_UNITS or float(match.group(1)) <= 0:
        raise DensePredError(f"{option} {text!r} is invalid; expected a size like 8GiB, 500MB or 2000000000")
    return int(float(match.group(1)) * SIZE_UNITS[unit])
