"""The memory budget of a run: what the whole process may use at its peak, and the tile that fits.

``memory_limit`` bounds the process's peak resident memory on the CPU, or the memory allocated
on a GPU. The default is a fraction of what is available when the run starts (at most half
of the available RAM, cgroup limits included; 60% of the free GPU memory). The estimate
(:class:`densepred.geometry.Footprint`) counts every buffer in flight: input windows read
ahead, the forward pass, logits and probabilities, results waiting to be written, encoding
and compression; it was calibrated against measured peaks of light and heavy networks
(docs/BENCHMARKS.md), and ``ESTIMATE_MARGIN`` covers what it does not model (the
allocator's fragmentation, library buffers).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import DensePredError
from ..geometry import Footprint, Geometry
from ..system import available_ram, resident_bytes

log = logging.getLogger("densepred")

CPU_FRACTION = 0.5  # of the available RAM at the start: the default limit on the CPU
CUDA_FRACTION = 0.6  # of the free GPU memory
ESTIMATE_MARGIN = 2.25  # measured peak over the raw estimate stayed below this (docs/BENCHMARKS.md)


@dataclass(frozen=True)
class MemoryBudget:
    """The peak memory a run may reach (``limit``) and what the process holds already."""

    limit: int
    baseline: int
    device: str  # "cpu" or "cuda"

    @property
    def room(self) -> int:
        """Bytes the run's buffers may take: the limit less the baseline."""
        return max(self.limit - self.baseline, 0)

    def less(self, reserved: int) -> MemoryBudget:
        """The budget with ``reserved`` bytes taken (an in-memory result, say)."""
        return MemoryBudget(self.limit, self.baseline + reserved, self.device)


def memory_budget(memory_limit: float | None, device: torch.device) -> MemoryBudget:
    """The budget for a run on ``device``: ``memory_limit`` (bytes, any positive number: ``8e9``,
    a NumPy integer) or the default fraction."""
    memory_limit = bytes_limit(memory_limit)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        allocated = torch.cuda.memory_allocated(device)
        return MemoryBudget(memory_limit or allocated + int(free * CUDA_FRACTION), allocated, "cuda")
    baseline = resident_bytes()
    return MemoryBudget(memory_limit or baseline + int(available_ram() * CPU_FRACTION), baseline, "cpu")


def tile_cost(geometry: Geometry, mode: str, footprint: Footprint, budget: MemoryBudget) -> Callable[[tuple], int]:
    """Estimated peak bytes over the baseline for an output tile, margin included."""
    estimate_mode = "mfp" if mode in ("mfp", "auto") else mode
    if budget.device == "cuda":
        return lambda tile: int(ESTIMATE_MARGIN * footprint.device_bytes(geometry, tile, estimate_mode))
    return lambda tile: int(ESTIMATE_MARGIN * footprint.bytes(geometry, tile, estimate_mode))


def bytes_limit(memory_limit: Any) -> int | None:
    """``memory_limit`` as whole bytes; one line for anything but a positive, finite number."""
    if memory_limit is None:
        return None
    number = isinstance(memory_limit, int | float | np.integer | np.floating)
    if isinstance(memory_limit, bool | np.bool_) or not number or not 1 <= memory_limit < math.inf:
        raise DensePredError(f"memory_limit = {memory_limit!r} is invalid; expected a number of bytes of at least 1")
    return int(memory_limit)


def too_small(budget: MemoryBudget, need: int, batch: int = 1) -> DensePredError:
    tiles = "the smallest valid tile" if batch == 1 else f"a batch of {batch} of the smallest valid tiles"
    return DensePredError(
        f"the memory limit of {_gib(budget.limit)} is too small: even {tiles} needs about "
        f"{_gib(budget.baseline + need)} ({_gib(budget.baseline)} for the process itself and {_gib(need)} for the "
        "tile's buffers); raise --memory-limit (memory_limit=) to at least that"
        + ("" if batch == 1 else ", or give a smaller --batch-size (batch_size=)"))


GIVEN = "it was given (--tile, tile_shape= or the config's tile_shape); give a smaller one to stay within the limit"


def warn_if_over(budget: MemoryBudget, need: int, tile: tuple[int, ...], reason: str = GIVEN) -> None:
    """Warn when ``tile`` needs more than the budget; ``reason`` says why it is used anyway."""
    if need > budget.room:
        log.warning("tile %s needs about %s with the process's %s, over the memory limit of %s; "
                    "it is used because %s", list(tile), _gib(budget.baseline + need),
                    _gib(budget.baseline), _gib(budget.limit), reason)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
