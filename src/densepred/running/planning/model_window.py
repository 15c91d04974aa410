"""The window of a model written elsewhere: given, the default, or the largest exact one the
memory budget holds; and the memory the model needs per window.

An exact window recomputes its context on every side, so a larger window wastes less; the
result does not depend on it. The default exact window is therefore the largest one whose
estimate fits the memory budget (:mod:`.memory_budget`), balanced so that no smaller window
needs as few windows; on the CPU one whose heap can keep its freed maps where that computes
not much more (:func:`default_window`). The model's memory per input voxel is measured once,
on one forward of a small window: on the CPU by the storages its operators return while
tensors hold them (a ``TorchFunctionMode``; MONAI's BasicUNet measured 938 bytes per voxel so,
as PyTorch's memory profiler did, and 930 by the process's peak resident memory), on a GPU by
the allocator's peak.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from ...errors import DensePredError
from ...geometry.overlap import exact_axis, fitted_window, smallest_window
from ...geometry.scale import scaled
from ...io import kept_bytes_of
from ...networks.caller_state import generator
from ...networks.devices import dtype_of
from ...networks.foreign import ForeignNet, TilingContract, per_axis_ints
from ...networks.memory_budget import MemoryBudget, memory_budget, too_small, warn_if_over

log = logging.getLogger("densepred")

DEFAULT_WINDOW = 64  # the least a default window is (per axis), as MONAI's examples use
PROBE_VOXELS = 2**17  # the measured forward's input, about 50^3
# windows a run holds besides the one computed, on each side (ModelRun.forward_each): one read
# ahead in the queue and one being read; one computed in the queue and one being written
IN_FLIGHT = 2
# a model's windows with freed heap blocks kept, over returned: peak over the baseline of MONAI's
# BasicUNet blend (64 x 128 x 128 windows) 1.65 against 0.92 GiB; its runs 1.4-1.7x faster so
# (docs/BENCHMARKS.md, "Kept or returned")
HEAP_KEPT = 2.0
LADDER_RATIO = 1.25  # a model profile's windows: each holds at least this times the voxels of the last
# on the CPU a window whose freed maps go back to the system computes each voxel slower than one
# whose heap keeps them: MONAI's 2D BasicUNet 1.55x to 2.6x here (docs/BENCHMARKS.md, "The
# default window keeps its heap"). The default window keeps its heap unless the largest window
# computes under 1 / RETURNED_COST of its voxels; 2, near the middle of that range, loses at most
# about 1.3x against the faster choice at either end
RETURNED_COST = 2.0
MARGIN = 1.25  # measured peak resident memory of a blended BasicUNet over the estimate: 1.07
_measured: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[str, str, bool], ModelMemory]] = (
    weakref.WeakKeyDictionary())


class OverBudget(DensePredError):
    """Even the smallest exact window does not fit the memory budget."""


@dataclass(frozen=True)
class ModelMemory:
    """Bytes one forward allocates per input voxel, the model's output channels, and its output
    voxels per input voxel before the crop (the product of its scale over the axes: 1, 1/8 for
    a 3D half-size output, 16 for a 2D 4x one)."""

    per_voxel: float
    channels: int
    outputs_per_voxel: float = 1.0

    def window_bytes(self, window: Sequence[int], in_channels: int, views: int = 1) -> int:
        """Estimated peak bytes of a run's windows: one forward, the input as read, padded and
        on the device (3 copies), the outputs logits, activated and returned (3), a running sum
        of the flipped views' logits, and the windows in flight besides it (:data:`IN_FLIGHT`:
        inputs read ahead, outputs waiting to be written)."""
        voxels = math.prod(window)
        outputs = voxels * self.outputs_per_voxel
        buffers = 4 * ((3 + IN_FLIGHT) * in_channels * voxels + (3 + IN_FLIGHT + (views > 1)) * self.channels * outputs)
        return int(MARGIN * (self.per_voxel * voxels + buffers))


def model_memory(net: torch.nn.Module, model: torch.nn.Module, contract: TilingContract, in_channels: int,
                 device: torch.device, memory_format: torch.memory_format | None, dtype: torch.dtype) -> ModelMemory:
    """The memory per input voxel of ``model`` (``net``'s model as it runs: on its device, in
    its memory format), measured on one forward of about PROBE_VOXELS; once per net, device
    and memory format in this process (a 2D model's over a stack counts as its own)."""
    key = (str(device), str(memory_format))
    known = _measured.setdefault(getattr(net, "flat", net), {})
    stacked = hasattr(net, "flat")
    if (*key, stacked) not in known:
        window = probe_window(contract)
        x = torch.rand((1, in_channels, *window), generator=generator()).to(device, dtype)
        if memory_format is not None and x.dim() == (5 if memory_format == torch.channels_last_3d else 4):
            x = x.contiguous(memory_format=memory_format)
        peak, shape = (_cuda_peak if device.type == "cuda" else _cpu_peak)(model, x)
        known[(*key, stacked)] = ModelMemory(peak / math.prod(window), shape[0],
                                             math.prod(up / down for up, down in contract.pairs))
        log.info("the model takes %.0f bytes per input voxel (measured on a %s window)",
                 known[(*key, stacked)].per_voxel, "x".join(map(str, window)))
    return known[(*key, stacked)]


def probe_window(c: TilingContract) -> tuple[int, ...]:
    """A valid window of about PROBE_VOXELS: the smallest accepted size plus factors."""
    side = PROBE_VOXELS ** (1 / len(c.factor))
    smallest = c.smallest or (1,) * len(c.factor)
    return _kept_fixed(c, tuple(m + max(0, math.ceil((side - m) / f)) * f
                                for m, f in zip(smallest, c.factor, strict=True)))


def _kept_fixed(c: TilingContract, window: Sequence[int]) -> tuple[int, ...]:
    """``window`` with the axes whose input size the model fixes at that size."""
    fixed = c.fixed or (False,) * len(window)
    return tuple(m if x else w for w, m, x in zip(window, c.smallest or window, fixed, strict=True))


def _cpu_peak(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    """The peak bytes of a forward, and its output's shape (channels, *space)."""
    with torch.inference_mode(), _LiveBytes() as live:
        y = model(x)
        shape = tuple(y.shape[1:])
        del y
    return live.peak, shape


class _LiveBytes(TorchFunctionMode):
    """The bytes of the storages the operators inside it return, while tensors hold them, and
    their peak (an operator's own scratch space is not seen)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.holders: dict[int, int] = {}

    def _release(self, key: int, nbytes: int) -> None:
        self.holders[key] -= 1
        if not self.holders[key]:
            del self.holders[key]
            self.live -= nbytes

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in _tensors(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                storage = tensor.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if key not in self.holders:
                    self.holders[key] = 0
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                self.holders[key] += 1
                weakref.finalize(tensor, self._release, key, nbytes)
        return out


def _tensors(value: Any) -> list[Any]:
    """Everything in a (nested) tuple, list or dict of an operator's results."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        else:
            found.append(item)
    return found


def _cuda_peak(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    torch.cuda.synchronize(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    base = torch.cuda.memory_allocated(x.device)
    with torch.inference_mode():
        shape = tuple(model(x).shape[1:])
    torch.cuda.synchronize(x.device)
    return torch.cuda.max_memory_allocated(x.device) - base, shape


def largest_window(least: Sequence[int], fitted: Callable[[tuple[int, ...]], tuple[int, ...]],
                   count: Callable[[int, int], int], factor: Sequence[int], cost: Callable[[tuple[int, ...]], int],
                   budget: MemoryBudget) -> tuple[int, ...]:
    """The largest window the budget holds, grown from ``least`` by factors on every axis until
    it covers the image (``fitted`` caps it), then shrunk per axis to the smallest size that
    needs no more windows (``count(axis, size)``); ``least`` itself when nothing larger fits
    (an error if even it does not)."""
    window = _grown(least, fitted, factor, cost, budget)[-1]
    return tuple(_balanced(axis, w, lo, f, count) for axis, (w, lo, f) in
                 enumerate(zip(window, fitted(tuple(least)), factor, strict=True)))


def _grown(least: Sequence[int], fitted: Callable[[tuple[int, ...]], tuple[int, ...]], factor: Sequence[int],
           cost: Callable[[tuple[int, ...]], int], budget: MemoryBudget) -> list[tuple[int, ...]]:
    """The windows from ``least`` grown by ``factor`` on every axis while the budget holds them."""
    windows = [fitted(tuple(least))]
    if cost(windows[0]) > budget.room:
        raise OverBudget(str(too_small(budget, cost(windows[0]))))
    while True:
        grown = fitted(tuple(w + f for w, f in zip(windows[-1], factor, strict=True)))
        if grown == windows[-1] or cost(grown) > budget.room:
            return windows
        windows.append(grown)


def _balanced(axis: int, window: int, least: int, factor: int, count: Callable[[int, int], int]) -> int:
    needed = count(axis, window)
    for size in range(least, window, factor):
        if count(axis, size) <= needed:
            return size
    return window


def exact_counter(spatial: Sequence[int], contract: TilingContract,
                  context: Sequence[tuple[int, int]]) -> Callable[[int, int], int]:
    """``count(axis, size)``: the exact windows of that input size along the axis."""
    g, extent = contract.in_output_units(), contract.output_extent(tuple(spatial))
    smallest = g.smallest or (1,) * len(spatial)

    def count(axis: int, size: int) -> int:
        return len(exact_axis(extent[axis], scaled(size, contract.pairs[axis]), g.factor[axis], g.crop[axis],
                              context[axis], smallest[axis]))
    return count


def check_window(memory: ModelMemory, window: tuple[int, ...], in_channels: int, views: int,
                 budget: MemoryBudget, reason: str = "it was given") -> None:
    """Warn when a window that was asked for (or a blend's) is estimated over the budget."""
    warn_if_over(budget, memory.window_bytes(window, in_channels, views), window, reason)


def result_bytes(memory: ModelMemory, output_shape: Sequence[int]) -> int:
    """An in-memory result's bytes (float32, every output channel)."""
    return 4 * memory.channels * int(np.prod(output_shape))


def window_for(net: ForeignNet, c: TilingContract, window: Sequence[int] | int | None, spatial: Sequence[int],
               mode: str, context: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    """The window: given (checked) or the smallest exact one of at least 64 per axis, never
    larger than the smallest accepted size that covers the image."""
    _check_image_size(c, spatial)
    if window is None:
        window = net.window
    if window is None:
        window = [w + max(0, math.ceil((DEFAULT_WINDOW - w) / f)) * f
                  for w, f in zip(_least(c, context), c.factor, strict=True)]
    window = per_axis_ints(window, net.dims, "window")
    smallest = c.smallest or (1,) * net.dims
    if not c.valid(window) and any(c.fixed):
        raise DensePredError(f"window {list(window)} is invalid for this model: its input size is fixed at "
                             f"{list(c.smallest)}")
    if not c.valid(window):
        raise DensePredError(f"window {list(window)} is invalid for this model: it accepts "
                             + ", ".join(f"{m} + k*{f}" for m, f in zip(smallest, c.factor, strict=True))
                             + " voxels per axis (its smallest input plus multiples of its downsampling factor)")
    window = _fitted(c, spatial, window)
    if mode == "exact":
        g = c.in_output_units()
        for n, w, f, cr, ctx, m in zip(c.output_extent(tuple(spatial)), c.output_extent(window), g.factor, g.crop,
                                       context, g.smallest or (1,) * net.dims, strict=True):
            try:
                exact_axis(n, w, f, cr, ctx, m)
            except DensePredError as exc:  # names the smallest valid window, in input voxels
                raise DensePredError(f"window {list(window)} is too small for exact tiling: the smallest valid "
                                     f"window is {_least(c, context)}") if c.scale else exc from None
    return window


def _check_image_size(c: TilingContract, spatial: Sequence[int]) -> None:
    """Refuse an image whose output would be empty: a valid-convolution model crops ``c.crop``
    output voxels from each side, so an axis needs an extent over twice that."""
    extent = c.output_extent(tuple(spatial))
    if all(n > 2 * cr for n, cr in zip(extent, c.crop, strict=True)):
        return
    least = [-(-(2 * cr + 1) * down // up) for cr, (up, down) in zip(c.crop, c.pairs, strict=True)]
    raise DensePredError(f"image spatial shape {list(spatial)} is too small for this model: it crops "
                         f"{list(c.crop)} output voxels from each side (valid convolutions), so it needs an image of "
                         f"at least {least} voxels")


def _least(c: TilingContract, context: Sequence[tuple[int, int]]) -> list[int]:
    """The smallest exact window per axis (input voxels; placed in output voxels)."""
    g = c.in_output_units()
    first = g.smallest or (1,) * len(c.factor)
    return list(_kept_fixed(c, c.input_extent(tuple(
        smallest_window(f, cr, ctx, m) for f, cr, ctx, m in zip(g.factor, g.crop, context, first, strict=True)))))


def smallest_exact(c: TilingContract) -> tuple[int, ...]:
    """The smallest exact window of the full contract ``c``."""
    return tuple(_least(c, c.context))


def covering_window(c: TilingContract, spatial: Sequence[int]) -> tuple[int, ...]:
    """The smallest window the model accepts that covers an image of ``spatial`` (its fixed
    size where the model fixes it)."""
    smallest = c.smallest or (1,) * len(spatial)
    return _fitted(c, spatial, [n + m + f for n, m, f in zip(spatial, smallest, c.factor, strict=True)])


def _fitted(c: TilingContract, spatial: Sequence[int], window: Sequence[int]) -> tuple[int, ...]:
    smallest = c.smallest or (1,) * len(c.factor)
    return _kept_fixed(c, [fitted_window(n, w, f, m)
                           for n, w, f, m in zip(spatial, window, c.factor, smallest, strict=True)])


def budget_window(run: Any, size: bool, budgeted: bool, memory_limit: int | None, in_memory: bool,
                  reason: str = "it was given") -> tuple[tuple[int, ...], int, bool]:
    """The run's window, the model's output channels (from the memory probe's small forward,
    measured once per model and device) and whether the heap may keep freed blocks while the
    windows run (:func:`heap_kept`). With ``budgeted``, an exact run's default window sized
    to the memory budget (``size``), or the run's window checked against it (a warning when
    over that says why it runs anyway: ``reason``)."""
    c, spatial, views = run.contract, run.source.spatial_shape, len(run.flips)
    memory = model_memory(run.net, run.model, c, run.net.in_channels, run.device, run.memory_format,
                          dtype_of(run.model))
    budget = memory_budget(memory_limit, run.device).less(kept_bytes_of(run.source))
    if in_memory:
        budget = budget.less(result_bytes(memory, run.output_shape))
    window = run.window
    if budgeted and not size:
        check_window(memory, window, run.net.in_channels, views, budget, reason)
    elif budgeted:
        window = default_window(c, spatial, c.context_with(run.flips),
                                lambda w: memory.window_bytes(w, run.net.in_channels, views), budget)
    estimate = memory.window_bytes(window, run.net.in_channels, views)
    kept = heap_kept(estimate, budget)
    if not kept:
        log.info("the windows return their maps to the system as they free them: the memory limit of %.2f GiB "
                 "holds less than %g times their estimate of %.2f GiB (a larger limit runs faster)",
                 budget.limit / 2**30, HEAP_KEPT, estimate / 2**30)
    return window, memory.channels, kept


def default_window(c: TilingContract, spatial: Sequence[int], context: Sequence[tuple[int, int]],
                   cost: Callable[[tuple[int, ...]], int], budget: MemoryBudget) -> tuple[int, ...]:
    """An exact run's default window: the largest the budget holds; but where that one's maps
    would go back to the system as they are freed (:func:`heap_kept`), the largest whose heap
    keeps them, unless its windows compute over :data:`RETURNED_COST` times the voxels
    (context computed again): a 2D model's window over a stack, deeper only in slices, gains
    nothing from its size and loses its heap."""
    least, count = _least(c, context), exact_counter(spatial, c, context)

    def fitted(w: tuple[int, ...]) -> tuple[int, ...]:
        return _fitted(c, spatial, w)

    largest = largest_window(least, fitted, count, c.factor, cost, budget)
    limit = f"the memory limit of {budget.limit / 2**30:.2f} GiB"
    try:
        kept = (largest if heap_kept(cost(largest), budget) else
                largest_window(least, fitted, count, c.factor, lambda w: int(HEAP_KEPT * cost(w)), budget))
    except OverBudget:
        kept = largest
    computed = {w: math.prod(w) * math.prod(count(axis, n) for axis, n in enumerate(w)) for w in (kept, largest)}
    if kept == largest or computed[kept] > RETURNED_COST * computed[largest]:
        log.info("exact window %s: the largest %s holds", list(largest), limit)
        return largest
    log.info("exact window %s: the largest whose freed maps %s lets the heap keep (its windows compute %.2fx the "
             "voxels of the largest window it holds, %s, whose maps would go back to the system)", list(kept), limit,
             computed[kept] / computed[largest], list(largest))
    return kept


def heap_kept(window_bytes: int, budget: MemoryBudget) -> bool:
    """Whether a run's windows may keep freed heap blocks for the next window (fast: a window's
    maps are reused, not faulted in afresh) rather than return them to the system: where the
    budget holds :data:`HEAP_KEPT` times the windows' estimate. On a GPU the maps are on the
    device, and the heap holds only buffers: always kept."""
    return budget.device == "cuda" or window_bytes * HEAP_KEPT <= budget.room


__all__ = ["DEFAULT_WINDOW", "HEAP_KEPT", "IN_FLIGHT", "MARGIN", "PROBE_VOXELS", "RETURNED_COST", "ModelMemory",
           "OverBudget", "budget_window", "covering_window", "default_window", "exact_counter", "heap_kept",
           "largest_window", "model_memory", "probe_window", "smallest_exact", "window_for"]


@dataclass(frozen=True)
class LadderStep:
    """A window a model profile measures: its input shape, the exact windows the image needs of
    it, its memory estimate (bytes), and whether a run of it keeps freed heap blocks
    (:func:`heap_kept`)."""

    window: tuple[int, ...]
    windows: int
    estimated_bytes: int
    heap_kept: bool = True


def window_ladder(run: Any, memory_limit: int | None) -> list[LadderStep]:
    """Exact windows of ``run``'s model from the smallest to the largest the memory budget holds,
    on the path the default window is grown along, each balanced like it and holding at least
    :data:`LADDER_RATIO` times the voxels of the one before; ``run``'s own window (an exact
    run's default, :func:`default_window`) among them."""
    c, spatial, views = run.contract, run.source.spatial_shape, len(run.flips)
    memory = model_memory(run.net, run.model, c, run.net.in_channels, run.device, run.memory_format,
                          dtype_of(run.model))
    context = c.context_with(run.flips)
    least, count = _least(c, context), exact_counter(spatial, c, context)

    def cost(window: tuple[int, ...]) -> int:
        return memory.window_bytes(window, run.net.in_channels, views)

    budget = memory_budget(memory_limit, run.device).less(kept_bytes_of(run.source))
    path = _grown(least, lambda w: _fitted(c, spatial, w), c.factor, cost, budget)
    floor = _fitted(c, spatial, least)
    balanced = list(dict.fromkeys(tuple(_balanced(axis, w, lo, f, count) for axis, (w, lo, f) in
                                        enumerate(zip(window, floor, c.factor, strict=True))) for window in path))
    own = tuple(run.window)
    balanced = sorted({*balanced, own}, key=lambda w: (math.prod(w), w))
    kept = [balanced[0]]
    for window in balanced[1:]:
        if math.prod(window) >= LADDER_RATIO * math.prod(kept[-1]) or window in (own, balanced[-1]):
            kept.append(window)
    return [LadderStep(w, math.prod(count(axis, n) for axis, n in enumerate(w)), cost(w), heap_kept(cost(w), budget))
            for w in kept]
