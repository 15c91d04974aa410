"""Window placement for models written elsewhere (U-Nets): exact crop-only tiling, or blending.

A model's **tiling contract** per axis: its total downsampling ``factor`` F (window origins
must be multiples of it), the ``crop`` c it cuts from each side (0 for same padding; a
valid-convolution U-Net's output is ``window - 2c``), and its ``context`` (how far an output
voxel's inputs reach, low and high side). Output coordinates are input coordinates less c.

**Exact.** A window of ``w`` input voxels at origin ``o`` gives outputs ``[o, o + w - 2c)``;
those at least the context away from an interior window side equal the whole-volume forward.
Ownership steps by the largest multiple of F that a window starting ``ceil(low / F) * F``
before the step's start still trusts whole; the last window ends at the (padded) volume's end,
and each output voxel is *owned* by exactly one window. Because the owned ranges start at
multiples of the step, zarr shards and cluster blocks of a multiple of it are each written by
their own windows::

    window k      |lead|.........trusted.........|ctx|
    owned              |<- step ->|
                       k * step

The volume is padded with zeros at its high end to the smallest size ``P >= max(S, w)`` with
``P - w`` a multiple of F (for a same-padded net: a multiple of F); the result equals the
whole-volume forward of that padded volume, cropped to the volume.

**Blend.** Windows overlap by a fraction; every window's output is weighted (Gaussian) and the
weighted sum is divided by the sum of the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import DensePredError


@dataclass(frozen=True)
class AxisWindow:
    """One window on one axis: its input ``start`` and the output range ``[own_lo, own_hi)`` it owns."""

    start: int
    own_lo: int
    own_hi: int


def padded_size(size: int, window: int, factor: int) -> int:
    """The smallest ``P >= max(size, window)`` with ``P - window`` a multiple of ``factor``."""
    extent = max(size, window)
    return window + math.ceil((extent - window) / factor) * factor


def exact_step(window: int, factor: int, crop: int, context: tuple[int, int], smallest: int = 1) -> int:
    """The output voxels each exact window owns: the largest multiple of ``factor`` such that a
    window starting ``ceil(low / factor) * factor`` before a multiple of it trusts the next step."""
    low, high = context
    step = (window - 2 * crop - high - _lead(low, factor)) // factor * factor
    if step < factor:
        raise DensePredError(f"window {window} is too small for exact tiling: its output less a context of "
                             f"{low}+{high} voxels must hold one downsampling factor ({factor}); the smallest valid "
                             f"window is {smallest_window(factor, crop, context, smallest)}")
    return step


def exact_axis(size: int, window: int, factor: int, crop: int, context: tuple[int, int],
               smallest: int = 1) -> list[AxisWindow]:
    """Crop-only windows over ``size`` input voxels whose owned ranges partition the output
    ``[0, padded_size - 2 crop)`` at the multiples of :func:`exact_step`; so any grid of a
    multiple of the step (zarr shards, cluster blocks) is owned window by window. ``smallest``
    is the model's smallest input size (it accepts ``smallest + k * factor``), for the message
    when ``window`` is too small.

    Example:
        >>> [(w.start, w.own_lo, w.own_hi) for w in exact_axis(100, 48, 8, 0, (10, 9))]
        [(0, 0, 32), (16, 32, 48), (32, 48, 64), (48, 64, 80), (56, 80, 104)]
    """
    total = padded_size(size, window, factor)
    if total == window:  # one window covers the axis: no interior side
        return [AxisWindow(0, 0, window - 2 * crop)]
    step = exact_step(window, factor, crop, context, smallest)
    lead, end = _lead(context[0], factor), total - 2 * crop
    windows: list[AxisWindow] = []
    for lo in range(0, end, step):
        start, hi = max(0, min(lo - lead, total - window)), min(lo + step, end)
        if windows and windows[-1].start == start:  # the last window, shifted back, owns the rest
            windows[-1] = AxisWindow(start, windows[-1].own_lo, hi)
        else:
            windows.append(AxisWindow(start, lo, hi))
    return windows


def exact_shard(size: int, window: int, factor: int, crop: int, context: tuple[int, int]) -> int:
    """An output shard (write unit) that exact windows own whole: the multiple of the step
    nearest above the window's output, or the whole axis when one window covers it."""
    if padded_size(size, window, factor) == window:
        return window - 2 * crop
    step = exact_step(window, factor, crop, context)
    return step * math.ceil((window - 2 * crop) / step)


def _lead(low: int, factor: int) -> int:
    """How far before its owned range an exact window starts: the low context, up to a factor."""
    return math.ceil(low / factor) * factor


def smallest_window(factor: int, crop: int, context: tuple[int, int], smallest: int = 1) -> int:
    """The smallest input size the model accepts (``smallest + k * factor``) whose output less
    the context (its low side rounded up to the factor) holds one factor."""
    need = factor + 2 * crop + _lead(context[0], factor) + context[1]
    start = smallest if smallest > 1 else factor
    return start + max(0, math.ceil((need - start) / factor)) * factor


def fitted_window(size: int, window: int, factor: int, smallest: int) -> int:
    """``window``, or the smallest accepted size (``smallest + k * factor``) that covers ``size``
    when that is smaller: a window larger than the volume would only pad it."""
    cover = smallest + max(0, math.ceil((size - smallest) / factor)) * factor
    return min(window, cover)


def blend_axis(size: int, window: int, factor: int, overlap: float) -> list[int]:
    """Window starts over ``size`` voxels with ``overlap`` (a fraction of the window), aligned
    to ``factor``; the last window ends at the padded end.

    Example:
        >>> blend_axis(100, 32, 8, 0.5)
        [0, 16, 32, 48, 64, 72]
    """
    if not 0 <= overlap < 1:
        raise DensePredError(f"overlap {overlap!r} is invalid; expected a fraction in [0, 1)")
    step = max(factor, int(window * (1 - overlap)) // factor * factor)
    total = padded_size(size, window, factor)
    return sorted({*range(0, total - window, step), total - window})
