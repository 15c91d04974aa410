"""Torch devices: choosing one, the memory a tile may use on it, moving a net there."""

from __future__ import annotations

import copy
import os

import torch

from ..errors import DensePredError

CPU_MEMORY_FRACTION = 0.25  # of the available RAM, for the tile's activations
CUDA_MEMORY_FRACTION = 0.6  # of the free GPU memory


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise DensePredError(f"device {device!r} is invalid; expected e.g. 'cpu', 'cuda' or 'cuda:0'") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DensePredError(f"device {device!r} was requested but no CUDA GPU is available; use 'cpu'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DensePredError(
                f"device {device!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)"
            )
    return resolved


def available_memory(device: torch.device) -> int:
    """Bytes a tile may use on ``device``: a fraction of free GPU memory or available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_MEMORY_FRACTION)
    return int(available_ram() * CPU_MEMORY_FRACTION)


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


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Whether two device names mean the same device (``cuda`` is the current GPU, ``cpu:0`` is ``cpu``)."""
    return _canonical(torch.device(a)) == _canonical(torch.device(b))


def _canonical(device: torch.device) -> tuple[str, int]:
    if device.type == "cuda":
        return "cuda", device.index if device.index is not None else torch.cuda.current_device()
    return device.type, 0 if device.index is None or device.type == "cpu" else device.index


def on_device(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``net`` itself when its parameters are on ``device``, else a copy moved there."""
    parameter = next(net.parameters(), None)
    if parameter is None or same_device(parameter.device, device):
        return net
    return copy.deepcopy(net).to(device)
