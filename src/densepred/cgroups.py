"""The control groups this process runs in: the memory it may still take and the CPU time it may
use, read at every level of its hierarchy.

Batch systems and container runtimes limit a process through its cgroup, and often at a level
above the process's own group: Slurm sets a job's memory on the job's group and starts its
tasks in groups below it, with no limit of their own. A CPU quota (Kubernetes' CPU limit,
``docker run --cpus``) is time per period: every core of the host stays visible to
``os.cpu_count()`` and the affinity mask, and threads beyond the quota are stopped until the
next period. Both versions are read: v2 (one hierarchy; ``memory.max``, ``cpu.max``) and v1 (a
hierarchy per controller; ``memory.limit_in_bytes``, ``cpu.cfs_quota_us``), each found through
``/proc/self/mountinfo``: a container sees the part of the hierarchy mounted for it at the
mount's root. Where nothing can be read (no cgroups, another OS) there is no limit.

Part of the foundation every layer may use: it imports nothing else of densepred.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

PROC_CGROUP = "/proc/self/cgroup"
MOUNTINFO = "/proc/self/mountinfo"
NO_LIMIT = 2**60  # v1 writes "no limit" as a number near 2**63


@dataclass(frozen=True)
class Group:
    """One folder of this process's cgroup hierarchy, for one version."""

    folder: Path
    version: int  # 1 or 2


def memory_room(proc_cgroup: str = PROC_CGROUP, mountinfo: str = MOUNTINFO) -> int | None:
    """Bytes the process may still take before a cgroup limit (its group's or any above it) is
    reached, or None where no level limits memory. Usage counts what the kernel cannot drop:
    inactive file pages (the page cache of files read and written) are reclaimed before a group
    runs out, so a run after a large write still sees the room it has."""
    rooms = []
    for group in groups("memory", proc_cgroup, mountinfo):
        names = (("memory.max", "memory.current", "inactive_file") if group.version == 2 else
                 ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))
        limit = read_int(group.folder / names[0])
        if limit is None or limit >= NO_LIMIT:
            continue
        used = (read_int(group.folder / names[1]) or 0) - stat_values(group.folder / "memory.stat").get(names[2], 0)
        rooms.append(max(limit - max(used, 0), 0))
    return min(rooms) if rooms else None


def cpu_quota(proc_cgroup: str = PROC_CGROUP, mountinfo: str = MOUNTINFO) -> float | None:
    """The CPUs' worth of time per period the process may use (its group's quota or the least of
    those above it), or None where no level sets one."""
    quotas = []
    for group in groups("cpu", proc_cgroup, mountinfo):
        if group.version == 2:
            fields = read_text(group.folder / "cpu.max").split()
            quota, period = [*fields, "", ""][:2]
        else:
            quota = read_text(group.folder / "cpu.cfs_quota_us").strip()
            period = read_text(group.folder / "cpu.cfs_period_us").strip()
        if quota.isdigit() and period.isdigit() and int(period) > 0:  # "max", or -1 in v1: no quota
            quotas.append(int(quota) / int(period))
    return min(quotas) if quotas else None


def quota_cores(proc_cgroup: str = PROC_CGROUP, mountinfo: str = MOUNTINFO) -> int | None:
    """Whole cores the CPU quota keeps busy (rounded down: a thread more than the quota holds is
    stopped each period, and the threads that wait on it with it), at least 1; None without one."""
    quota = cpu_quota(proc_cgroup, mountinfo)
    return None if quota is None else max(1, math.floor(quota + 1e-9))


def groups(controller: str, proc_cgroup: str = PROC_CGROUP, mountinfo: str = MOUNTINFO) -> list[Group]:
    """The folders of this process's group for ``controller`` and of every group above it up to
    the mounted root, innermost first, in each hierarchy that has the controller mounted. This
    process's own are found once (a process stays in its groups) and their files read each time."""
    if (proc_cgroup, mountinfo) == (PROC_CGROUP, MOUNTINFO):
        return _own_groups(controller, os.getpid())
    return _found_groups(controller, proc_cgroup, mountinfo)


@functools.lru_cache(maxsize=8)
def _own_groups(controller: str, pid: int) -> list[Group]:
    """This process's groups (by its id: a forked child finds its own)."""
    return _found_groups(controller, PROC_CGROUP, MOUNTINFO)


def _found_groups(controller: str, proc_cgroup: str, mountinfo: str) -> list[Group]:
    found = []
    for version, controllers, path in _memberships(proc_cgroup):
        for mount_root, mount_point, mounted in _mounts(mountinfo):
            serves = mounted is None if version == 2 else (mounted is not None and controller in mounted & controllers)
            if serves:
                found += [Group(folder, version) for folder in _up_to(_folder(path, mount_root, mount_point),
                                                                      mount_point)]
    return found


def _folder(path: str, mount_root: str, mount_point: str) -> Path:
    """The folder of group ``path`` in a hierarchy whose ``mount_root`` is mounted at
    ``mount_point`` (the mount point itself where the group is not below the root mounted)."""
    under = mount_root in ("/", path) or path.startswith(mount_root + "/")
    inside = path[len(mount_root):].lstrip("/") if under else ""
    return Path(mount_point, "" if ".." in Path(inside).parts else inside)  # a group outside the namespace's root


def _up_to(folder: Path, top: str) -> list[Path]:
    """``folder`` and each folder above it up to ``top``, innermost first."""
    folders = [folder]
    while folders[-1] != Path(top) and folders[-1].parent != folders[-1]:
        folders.append(folders[-1].parent)
    return folders


def _memberships(proc_cgroup: str) -> list[tuple[int, frozenset[str], str]]:
    """``(version, controllers, path)`` of each line of ``/proc/self/cgroup``."""
    memberships = []
    for line in read_text(proc_cgroup).splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        number, controllers, path = parts
        version = 2 if number == "0" and not controllers else 1
        memberships.append((version, frozenset(controllers.split(",")) - {""}, path))
    return memberships


def _mounts(mountinfo: str) -> list[tuple[str, str, frozenset[str] | None]]:
    """``(root, mount point, controllers)`` of each cgroup mount (controllers None for v2)."""
    mounts = []
    for line in read_text(mountinfo).splitlines():
        fields, _, tail = line.partition(" - ")
        before, after = fields.split(), tail.split()
        if len(before) < 5 or len(after) < 3 or after[0] not in ("cgroup", "cgroup2"):
            continue
        root, point = _unescaped(before[3]), _unescaped(before[4])
        mounts.append((root, point, None if after[0] == "cgroup2" else frozenset(after[2].split(","))))
    return mounts


def _unescaped(text: str) -> str:
    """A mountinfo path with its octal escapes (``\\040`` for a space) undone."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def read_text(path: str | Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def read_int(path: str | Path) -> int | None:
    text = read_text(path).strip()
    return int(text) if text.lstrip("-").isdigit() else None  # missing, or "max"


def stat_values(path: str | Path) -> dict[str, int]:
    """The ``key value`` lines of a cgroup stat file."""
    values = {}
    for line in read_text(path).splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[key] = int(value)
    return values


def affinity_cores() -> int:
    """Cores in this process's affinity mask (a Slurm allocation, ``taskset``)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


__all__ = ["Group", "affinity_cores", "cpu_quota", "groups", "memory_room", "quota_cores"]
