"""Multiscale pyramids and sharded chunk layouts: plain arithmetic, no NumPy, no files.

A pyramid halves the spatial axes level by level until the coarsest level fits a viewer's
3D view (napari renders the coarsest level; neuroglancer fetches small inner chunks).
Anisotropic data (serial-section EM at 30 x 8 x 8 nm) is halved only on its fine axes until
it is about isotropic::

    level 0   30 x  8 x  8 nm    factors (1, 1, 1)
    level 1   30 x 16 x 16 nm    factors (1, 2, 2)
    level 2   30 x 32 x 32 nm    factors (1, 4, 4)
    level 3   60 x 64 x 64 nm    factors (2, 8, 8)

Each level is written in blocks of one shard, read from the level below: a block of level
``l`` covers ``shard * step`` voxels of level ``l - 1`` (``step`` is 1 or 2 per axis).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

Shape = tuple[int, ...]
VIEWER_SIDE = 256  # napari's 3D view renders the coarsest level: make it this small
INNER_CHUNK = 64  # neuroglancer's advice: inner chunks of about 64^3
ANISOTROPY = 0.75  # halve an axis while its voxel is at most this fraction of the largest


@dataclass(frozen=True)
class Level:
    """One pyramid level: its shape, the step from the level below, and the total factor."""

    index: int
    shape: Shape
    step: Shape  # per axis: 2 if halved from the level below, else 1 (level 0: all 1)
    factor: Shape  # per axis: product of the steps so far


def pyramid(shape: Sequence[int], voxel_size: Sequence[float] | None = None, levels: int | None = None,
            max_side: int = VIEWER_SIDE) -> list[Level]:
    """The levels of a pyramid over a spatial ``shape``.

    ``levels`` fixes their number (1 = no pyramid); by default levels are added until every
    axis of the coarsest is at most ``max_side`` (or no axis can be halved any more).

    Example:
        >>> [lv.shape for lv in pyramid((40, 600, 600), voxel_size=(30, 8, 8))]
        [(40, 600, 600), (40, 300, 300), (40, 150, 150)]
    """
    shape = tuple(int(n) for n in shape)
    size = tuple(float(v) for v in (voxel_size or (1.0,) * len(shape)))
    result = [Level(0, shape, (1,) * len(shape), (1,) * len(shape))]
    while True:
        last = result[-1]
        if levels is not None and len(result) >= levels:
            return result
        if levels is None and max(last.shape) <= max_side:
            return result
        step = halving_step(last.shape, tuple(s * f for s, f in zip(size, last.factor, strict=True)))
        if step is None:
            return result
        shape_next = tuple(math.ceil(n / s) for n, s in zip(last.shape, step, strict=True))
        factor = tuple(f * s for f, s in zip(last.factor, step, strict=True))
        result.append(Level(last.index + 1, shape_next, step, factor))


def halving_step(shape: Sequence[int], voxel_size: Sequence[float]) -> Shape | None:
    """Which axes to halve next: those with more than one voxel whose voxel is at most
    ``ANISOTROPY`` of the largest voxel among them (all of them when about isotropic)."""
    candidates = [a for a, n in enumerate(shape) if n > 1]
    if not candidates:
        return None
    largest = max(voxel_size[a] for a in candidates)
    fine = [a for a in candidates if voxel_size[a] <= ANISOTROPY * largest] or candidates
    return tuple(2 if a in fine else 1 for a in range(len(shape)))


def inner_chunks(shard: Sequence[int], target: Sequence[int] | int = INNER_CHUNK) -> Shape:
    """Inner chunks of a shard: per axis the divisor of the shard side nearest ``target``
    (zarr needs chunks that divide the shard).

    Example:
        >>> inner_chunks((112, 12, 97), 64)
        (56, 12, 97)
    """
    targets = (target,) * len(shard) if isinstance(target, int) else tuple(target)
    return tuple(_nearest_divisor(int(s), int(t)) for s, t in zip(shard, targets, strict=True))


def _nearest_divisor(n: int, target: int) -> int:
    if target >= n:
        return n
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(math.log(d / target)), -d))


def level_shard(tile: Sequence[int], shape: Sequence[int]) -> Shape:
    """The shard of a pyramid level: the level-0 output tile, clipped to the level's shape."""
    return tuple(min(t, n) for t, n in zip(tile, shape, strict=True))


def shard_boxes(shape: Sequence[int], shard: Sequence[int]) -> Iterator[tuple[int, tuple[tuple[int, int], ...]]]:
    """``(id, ((start, stop), ...))`` of every shard of an array, in C order."""
    return shards_meeting(shape, shard, tuple((0, n) for n in shape))


def shards_meeting(shape: Sequence[int], shard: Sequence[int],
                   box: Sequence[tuple[int, int]]) -> Iterator[tuple[int, tuple[tuple[int, int], ...]]]:
    """``(id, ((start, stop), ...))`` of the shards of an array that ``box`` meets, in C order;
    ids number every shard of the array in C order."""
    counts = [math.ceil(n / s) for n, s in zip(shape, shard, strict=True)]
    ranges = [range(a // s, (b - 1) // s + 1) for (a, b), s in zip(box, shard, strict=True)]
    for index in itertools.product(*ranges):
        shard_id = 0
        for i, c in zip(index, counts, strict=True):
            shard_id = shard_id * c + i
        yield shard_id, tuple((i * s, min((i + 1) * s, n)) for i, s, n in zip(index, shard, shape, strict=True))


def box_above(box: Sequence[tuple[int, int]], step: Sequence[int],
              below: Sequence[int]) -> tuple[tuple[int, int], ...] | None:
    """The box of the next level that ``box`` of the level below (of shape ``below``) alone
    determines, or None where ``box`` is off the step grid: it must start on the grid and end
    on it or at the level's edge, so that downsampling it equals the whole level's there.
    The inverse of :func:`source_box`."""
    if not all(a % k == 0 and (b % k == 0 or b == n) for (a, b), k, n in zip(box, step, below, strict=True)):
        return None
    return tuple((a // k, -(-b // k)) for (a, b), k in zip(box, step, strict=True))


def source_box(box: Sequence[tuple[int, int]], step: Sequence[int],
               below: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """The box of the level below that a block of the next level is computed from."""
    return tuple((a * s, min(b * s, n)) for (a, b), s, n in zip(box, step, below, strict=True))


def level_transform(level: Level, voxel_size: Sequence[float],
                    translation: Sequence[float]) -> tuple[list[float], list[float]]:
    """OME-Zarr scale and translation of a level whose voxels summarise ``factor`` voxels of
    level 0: the scale grows by the factor, the centre moves by ``(factor - 1) / 2`` voxels.
    Values to 15 significant digits, as they were meant (0.3, not the 0.30000000000000004 of
    3 x 0.1 in binary).

    Example:
        >>> level_transform(Level(1, (20, 50, 50), (1, 2, 2), (1, 2, 2)), (0.5, 0.1, 0.1), (0.5, 0.3, 0.1 * 3))
        ([0.5, 0.2, 0.2], [0.5, 0.35, 0.35])
    """
    scale = [_meant(v * f) for v, f in zip(voxel_size, level.factor, strict=True)]
    shift = [_meant(t + (f - 1) / 2 * v) for t, f, v in zip(translation, level.factor, voxel_size, strict=True)]
    return scale, shift


def _meant(value: float) -> float:
    return float(f"{value:.15g}")
