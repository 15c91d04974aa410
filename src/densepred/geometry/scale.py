"""Outputs at another scale than the input (a model that returns half its input's size, or
upsamples it 4x), as exact fractions.

A model's output ``scale`` per axis is the output voxels per input voxel, ``up / down`` in
lowest terms: an input window of ``w`` voxels gives ``w * up / down - 2 * crop`` outputs (the
crop counted in output voxels). Tiling such a model is tiling at scale 1 in output voxels: its
downsampling factor ``F`` (a multiple of ``down``, so that shifting the input by ``F`` shifts the
output by a whole ``F * up / down`` voxels), its smallest input and every window are multiplied
by the scale; window origins found in output voxels are divided by it to read the input.

Output voxel ``o`` of the whole image is centred on input voxel ``(o + crop + 1/2) / scale - 1/2``
(OME-Zarr's voxel centres): :func:`origin`.

Example:
    >>> scale_pairs("1/2", 2), scale_pairs(4, 2), scale_pairs([0.5, 1], 2)
    (((1, 2), (1, 2)), ((4, 1), (4, 1)), ((1, 2), (1, 1)))
    >>> scaled(101, (1, 2)), unscaled(48, (1, 2)), origin(0, (4, 1))
    (51, 96, -0.375)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from ..errors import DensePredError

MAX_TERM = 64  # the largest numerator or denominator a scale may have (4x, 1/2, 3/8, ...)

Pair = tuple[int, int]


def scale_pairs(value: Any, dims: int) -> tuple[Pair, ...]:
    """A scale given as a number, a fraction string (``"1/2"``), an ``(up, down)`` pair, or one
    per axis of those, as ``(up, down)`` pairs in lowest terms, one per axis."""
    values = list(value) if isinstance(value, list | tuple) and not _is_pair(value) else [value]
    if len(values) == 1:
        values = values * dims
    if len(values) != dims:
        raise DensePredError(f"scale {value!r} has {len(values)} values for a {dims}D model; give one, or one per "
                             "axis (output voxels per input voxel: 0.5, 1/2, 4)")
    return tuple(_pair(v, value) for v in values)


def _is_pair(value: Any) -> bool:
    return len(value) == 2 and all(isinstance(v, int) for v in value) and not isinstance(value[0], bool)


def _pair(value: Any, given: Any) -> Pair:
    """One axis's scale, the nearest fraction of small terms to the value (within 1e-6 of it)."""
    try:
        exact = Fraction(*value) if isinstance(value, list | tuple) else Fraction(str(value).strip())
    except (ValueError, TypeError, ZeroDivisionError):
        exact = Fraction(-1)
    ratio = exact.limit_denominator(MAX_TERM) if exact > 0 else exact
    if ratio <= 0 or ratio.numerator > MAX_TERM or abs(ratio - exact) > ratio / 10**6:
        raise DensePredError(f"scale {given!r} is invalid; expected output voxels per input voxel as a positive "
                             f"fraction with terms up to {MAX_TERM} (0.5, 1/2, 4), one or one per axis")
    return ratio.numerator, ratio.denominator


def ratio(pair: Pair) -> Fraction:
    return Fraction(*pair)


def scaled(size: int, pair: Pair) -> int:
    """Output voxels (before the crop) that cover ``size`` input voxels: rounded up."""
    up, down = pair
    return -(-size * up // down)


def unscaled(size: int, pair: Pair) -> int:
    """Input voxels of ``size`` output voxels; an error unless it is whole."""
    up, down = pair
    if size * down % up:
        raise DensePredError(f"{size} output voxels are not a whole number of input voxels at scale {up}/{down}")
    return size * down // up


def origin(crop: int, pair: Pair) -> float:
    """The input voxel (its centre, fractional) that output voxel 0 is centred on."""
    return float((crop + Fraction(1, 2)) / ratio(pair) - Fraction(1, 2))


def text(pairs: Sequence[Pair]) -> str:
    """``1/2x1/2``, ``4x4``."""
    return "x".join(str(ratio(p)) for p in pairs)


def aligned_factor(factor: int, pair: Pair) -> int:
    """The smallest multiple of ``factor`` by which a shift of the input shifts the output by
    whole voxels (a multiple of the scale's denominator)."""
    return math.lcm(factor, pair[1])


__all__ = ["MAX_TERM", "aligned_factor", "origin", "ratio", "scale_pairs", "scaled", "text", "unscaled"]
