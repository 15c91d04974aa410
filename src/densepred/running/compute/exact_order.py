"""The exact windows a one-process run of a model still computes, in C order, and when each of
its output shards is complete: found from per-axis facts and one bit per window, never a list
or a map of every window (a run of 10^7 windows would hold gigabytes before its first one).

Exact windows are products of per-axis windows (:func:`densepred.geometry.overlap.exact_axis`)
and the output's shards a grid, so a window reaches a range of shards on each axis, a shard is
reached by a product of per-axis counts of windows, and a window is needed when any shard it
reaches is not yet done.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ...geometry.overlap import AxisWindow
from ...io.done_ids import DoneIds


@dataclass(frozen=True)
class ExactPiece:
    """One exact window: where its outputs start (``starts``; its input's start, divided by the
    model's scale) and the output ``box`` it owns."""

    starts: tuple[int, ...]
    box: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class AxisShards:
    """One axis: its windows that own part of the output, what each owns, and the range of
    shards (``first``, ``last``) each reaches."""

    windows: tuple[AxisWindow, ...]
    owned: tuple[tuple[int, int], ...]
    reach: tuple[tuple[int, int], ...]
    counts: tuple[int, ...]  # per shard: the windows that reach it

    @classmethod
    def create(cls, windows: Sequence[AxisWindow], shard: int, size: int) -> AxisShards:
        kept = tuple(w for w in windows if w.own_lo < size)
        owned = tuple((w.own_lo, min(w.own_hi, size)) for w in kept)
        reach = tuple((lo // shard, (hi - 1) // shard) for lo, hi in owned)
        counts = [0] * math.ceil(size / shard)
        for first, last in reach:
            for j in range(first, last + 1):
                counts[j] += 1
        return cls(kept, owned, reach, tuple(counts))

    def any_of(self, shards: np.ndarray, axis: int) -> np.ndarray:
        """Per window along ``axis`` of ``shards`` (booleans, a shard per element): whether any
        shard it reaches is true."""
        total = np.cumsum(shards, axis=axis, dtype=np.int32)
        total = np.concatenate([np.zeros_like(np.take(total, [0], axis=axis)), total], axis=axis)
        first, last = (np.array(ends, np.intp) for ends in zip(*self.reach, strict=True))
        return np.take(total, last + 1, axis=axis) > np.take(total, first, axis=axis)


@dataclass
class ExactOrder:
    """The windows of an exact run over shards of ``shard`` voxels not in ``done``."""

    axes: list[AxisShards]
    grid: tuple[int, ...]
    done: DoneIds
    needed: np.ndarray  # one boolean per window (C order): it reaches a shard not done
    shards_to_do: int  # the shards not in ``done``

    @classmethod
    def create(cls, axes: Sequence[Sequence[AxisWindow]], shard: Sequence[int], output_shape: Sequence[int],
               done: DoneIds) -> ExactOrder:
        per_axis = [AxisShards.create(w, s, n) for w, s, n in zip(axes, shard, output_shape, strict=True)]
        grid = tuple(len(a.counts) for a in per_axis)
        to_do = ~done.mask(math.prod(grid)).reshape(grid)
        needed = to_do
        for axis, shards in enumerate(per_axis):
            needed = shards.any_of(needed, axis)
        return cls(per_axis, grid, done, needed, int(to_do.sum()))


    def voxels(self) -> int:
        """The output voxels the needed windows own."""
        lengths = [np.array([hi - lo for lo, hi in a.owned], np.int64) for a in self.axes]
        total = 0
        for i, length in enumerate(lengths[0]):
            row = self.needed[i].astype(np.int64)
            for other in reversed(lengths[1:]):
                row = row @ other
            total += int(length) * int(row)
        return total

    def pieces(self) -> Iterator[tuple[tuple[int, ...], ExactPiece]]:
        """The needed windows in C order: each one's index on every axis and its piece; made
        one row along the last axis at a time."""
        for row in np.ndindex(self.needed.shape[:-1]):
            for last in np.flatnonzero(self.needed[row]).tolist():
                index = (*row, last)
                parts = [(a.windows[k], a.owned[k]) for a, k in zip(self.axes, index, strict=True)]
                yield index, ExactPiece(tuple(w.start for w, _ in parts), tuple(owned for _, owned in parts))

    def shards_of(self, index: Sequence[int]) -> Iterator[tuple[int, int]]:
        """The shards not done that window ``index`` reaches: each one's id and how many
        windows reach it."""
        ranges = [range(a.reach[k][0], a.reach[k][1] + 1) for a, k in zip(self.axes, index, strict=True)]
        for position in itertools.product(*ranges):
            shard_id = 0
            for j, n in zip(position, self.grid, strict=True):
                shard_id = shard_id * n + j
            if shard_id not in self.done:
                yield shard_id, math.prod(a.counts[j] for a, j in zip(self.axes, position, strict=True))


__all__ = ["AxisShards", "ExactOrder", "ExactPiece"]
