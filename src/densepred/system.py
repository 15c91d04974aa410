"""How much memory this process may still take: the system's available memory, or less in a cgroup.

Part of the foundation every layer may use: it imports nothing else of densepred.
"""

from __future__ import annotations

import os


def available_ram() -> int:
    """Bytes of memory this process can still take: the system's available memory, or less when
    a cgroup (Slurm, Kubernetes, systemd) limits the process, so a job is not OOM-killed."""
    available = _meminfo_available()
    room = cgroup_memory_room()
    return available if room is None else min(available, room)


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def cgroup_memory_room(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> int | None:
    """The memory limit of this process's cgroup less what it uses, or None where there is no limit.

    cgroup v2: ``memory.max`` and ``memory.current`` of the process's own group; v1:
    ``memory/memory.limit_in_bytes`` and ``memory.usage_in_bytes``.
    """
    group = _cgroup_v2_path(proc)
    candidates = []
    if group is not None:
        candidates.append((os.path.join(root, group.lstrip("/"), "memory.max"),
                           os.path.join(root, group.lstrip("/"), "memory.current")))
    candidates.append((os.path.join(root, "memory.max"), os.path.join(root, "memory.current")))
    candidates.append((os.path.join(root, "memory", "memory.limit_in_bytes"),
                       os.path.join(root, "memory", "memory.usage_in_bytes")))
    for limit_file, usage_file in candidates:
        limit = _read_int(limit_file)
        if limit is None or limit >= 2**60:  # "max", or v1's "no limit" (a huge number)
            continue
        return max(limit - (_read_int(usage_file) or 0), 0)
    return None


def _cgroup_v2_path(proc: str) -> str | None:
    try:
        with open(proc) as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):  # missing, or "max"
        return None
