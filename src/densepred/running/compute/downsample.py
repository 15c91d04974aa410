"""Downsampling for the multiscale pyramid of an OME-Zarr output: one shard of a level from the level below.

Memory: one shard of the level and the ``2^d`` times larger box it is read from.
Probabilities are downsampled by the mean, labels by the mode (ties go to the smaller label).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def write_level_block(below: Any, target: Any, box: Sequence[tuple[int, int]], source: Sequence[tuple[int, int]],
                      step: Sequence[int], label: bool) -> None:
    """Write ``box`` of ``target`` (a level) from ``source`` of ``below`` (the level under it), durably."""
    lead = () if label else (slice(None),)
    data = below[(*lead, *(slice(a, b) for a, b in source))]
    reduce = downsample_mode if label else downsample_mean
    out_box = (*lead, *(slice(a, b) for a, b in box))
    target[out_box] = reduce(np.asarray(data), step)
    target.sync(out_box)


def _blocks(data: np.ndarray, step: Sequence[int]) -> np.ndarray:
    """``(..., *S)`` -> ``(..., *ceil(S / step), prod(step))``: each output voxel's block, the
    high edge padded by repeating the last voxel."""
    spatial = len(step)
    lead = data.ndim - spatial
    pad = [(0, 0)] * lead + [(0, (-n) % s) for n, s in zip(data.shape[lead:], step, strict=True)]
    if any(p for _, p in pad):
        data = np.pad(data, pad, mode="edge")
    shape = list(data.shape[:lead])
    for n, s in zip(data.shape[lead:], step, strict=True):
        shape += [n // s, s]
    blocks = data.reshape(shape)
    order = list(range(lead)) + [lead + 2 * a for a in range(spatial)] + [lead + 2 * a + 1 for a in range(spatial)]
    out = [data.shape[lead + a] // step[a] for a in range(spatial)]
    return blocks.transpose(order).reshape(*data.shape[:lead], *out, math.prod(step))


def downsample_mean(data: np.ndarray, step: Sequence[int]) -> np.ndarray:
    """Mean over each ``step`` block, in the data's dtype (integers rounded, ties to even)."""
    if np.issubdtype(data.dtype, np.integer) and data.dtype.itemsize <= 2:
        return _integer_mean(data, step)
    mean = _blocks(data, step).mean(axis=-1, dtype=np.float64)
    if np.issubdtype(data.dtype, np.integer):
        return np.rint(mean).astype(data.dtype)
    return mean.astype(data.dtype)


def _integer_mean(data: np.ndarray, step: Sequence[int]) -> np.ndarray:
    """:func:`downsample_mean` of 8- and 16-bit integers as a sum of strided views: the sums are
    exact and a block has 2, 4 or 8 voxels, so the float32 quotient is the float64 mean (5x
    faster than reordering the blocks)."""
    spatial = len(step)
    lead = data.ndim - spatial
    pad = [(0, 0)] * lead + [(0, (-n) % s) for n, s in zip(data.shape[lead:], step, strict=True)]
    if any(p for _, p in pad):
        data = np.pad(data, pad, mode="edge")
    out = (*data.shape[:lead], *(n // s for n, s in zip(data.shape[lead:], step, strict=True)))
    total = np.zeros(out, np.int32)  # 8 x 65535 fits, and so does 8 x -32768
    for offsets in itertools.product(*(range(s) for s in step)):
        total += data[(..., *(slice(o, None, s) for o, s in zip(offsets, step, strict=True)))]
    return np.rint(total / np.float32(math.prod(step))).astype(data.dtype)


def downsample_mode(labels: np.ndarray, step: Sequence[int]) -> np.ndarray:
    """The most frequent label of each ``step`` block; ties go to the smaller label."""
    blocks = np.sort(_blocks(labels, step), axis=-1)
    counts = (blocks[..., :, None] == blocks[..., None, :]).sum(axis=-1)
    # the first of the most frequent in sorted order is the smallest of them
    return np.take_along_axis(blocks, counts.argmax(axis=-1)[..., None], axis=-1)[..., 0]
