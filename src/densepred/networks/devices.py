"""Torch devices: choosing one, telling two names of one device apart, moving a net there, and
the CPU threads torch runs."""

from __future__ import annotations

import copy
import logging
import os
import warnings
from typing import Any

import torch

from ..errors import DensePredError
from ..system import available_cores

log = logging.getLogger("densepred")
_threads_checked = False


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise DensePredError(f"device {device!r} is invalid; expected e.g. 'cpu', 'cuda' or 'cuda:0'") from None
    if resolved.type == "cpu":
        check_cpu_threads()
    if resolved.type not in ("cpu", "cuda"):
        raise DensePredError(f"device {device!r} is not supported: densepred runs on 'cpu' and on NVIDIA GPUs "
                             "('cuda' or 'cuda:N')")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DensePredError(f"device {device!r} was requested but no CUDA GPU is available; use 'cpu'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DensePredError(
                f"device {device!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)"
            )
    return resolved


def fit_cpu_threads() -> int | None:
    """In a process densepred runs (the command line): torch's CPU threads cut to the cores the
    process may keep busy (its affinity mask, or a cgroup CPU quota: Kubernetes, ``docker
    --cpus``), where torch would run more, unless ``OMP_NUM_THREADS`` names a number; processes
    it starts later (a profile's measuring processes) get the same. The new count, or None."""
    cores = available_cores()
    if os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads() <= cores:
        return None
    torch.set_num_threads(cores)
    os.environ["OMP_NUM_THREADS"] = str(cores)
    log.info("torch runs %d CPU threads: the cores this process may keep busy (its CPU quota)", cores)
    return cores


def check_cpu_threads() -> None:
    """Once per process: a warning when torch runs more CPU threads than the process may keep
    busy. Under a CPU quota the threads beyond it are stopped every period, and every thread
    waits for them (docs/BENCHMARKS.md, `benchmarks/cpu_quota.py`). A caller's process
    is the caller's to set, so it is told, not changed."""
    global _threads_checked
    if _threads_checked:
        return
    _threads_checked = True
    cores, threads = available_cores(), torch.get_num_threads()
    if threads > cores:
        log.warning("torch runs %d CPU threads, but this process may keep only %d core%s busy (its affinity mask or "
                    "cgroup CPU quota): call torch.set_num_threads(%d) first, or set OMP_NUM_THREADS=%d, for full "
                    "speed", threads, cores, "" if cores == 1 else "s", cores, cores)


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


# normalisations over space whose CPU kernels want contiguous maps
SPATIAL_NORMS = (torch.nn.modules.instancenorm._InstanceNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)


def fast_memory_format(model: torch.nn.Module, device: torch.device) -> torch.memory_format | None:
    """The memory format a model written elsewhere runs in on ``device``: channels-last on the
    CPU for float32 models with 4D or 5D (2D or 3D convolution) weights, else None (as it is).

    oneDNN's CPU convolutions run on channels-last activations without reordering them for
    every layer: MONAI's BasicUNet ran 1.25x faster per window so, in less memory
    (docs/BENCHMARKS.md). float64 convolutions have no channels-last kernels, and instance
    norm copies channels-last maps back (the same net with instance norm ran 1.2x slower so).
    """
    if device.type != "cpu" or any(isinstance(m, SPATIAL_NORMS) for m in model.modules()):
        return None
    if any(p.dtype != torch.float32 for p in model.parameters()):
        return None
    ranks = {p.dim() for p in model.parameters() if p.dim() in (4, 5)}
    if len(ranks) != 1:
        return None
    return torch.channels_last if ranks == {4} else torch.channels_last_3d


def in_memory_format(model: torch.nn.Module, memory_format: torch.memory_format | None) -> torch.nn.Module:
    """A copy of ``model`` with its weights in ``memory_format`` (``model`` itself for None, or if
    it cannot be copied)."""
    if memory_format is None:
        return model
    try:
        with warnings.catch_warnings():  # torch's own, met copying an exported program or a scripted model
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", "The .grad attribute of a Tensor that is not a leaf", UserWarning)
            return copy.deepcopy(model).to(memory_format=memory_format)
    except (RuntimeError, TypeError, copy.Error):
        return model


def dtype_of(model: Any) -> torch.dtype:
    """The dtype the model's parameters (and so its inputs) have."""
    parameter = next(model.parameters(), None)
    return torch.float32 if parameter is None else parameter.dtype
