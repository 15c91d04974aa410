"""The multiscale pyramid of an OME-Zarr output, built in this process block by block, resumably.

While level 0 is written, :class:`PyramidFeed` builds the levels above from the values being
written. After the last tile (:meth:`PyramidFeed.finish`), :func:`build_pyramid` computes whatever the feed could not
from the level below, one shard at a time (:func:`write_level_block`).
Each finished block is made durable and recorded in ``level<N>.log`` beside ``done.log``, so a
resumed run continues the pyramid where it stopped and the result is byte-identical.

A level is the one below reduced by a mean over each step (probabilities) or by the most
frequent label (label images): :func:`downsample_mean`, :func:`downsample_mode`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import Level, box_above, level_shard, shard_boxes, shards_meeting, source_box
from ..progress import Progress, ProgressOption
from .arrays import ArraySpec
from .run_record import DoneLog, read_done, write_error


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
    """:func:`downsample_mean` of 8- and 16-bit integers as sums of strided views, one axis at a
    time (halving an axis is one addition): the sums are exact and a block has 2, 4 or 8
    voxels, so the float32 quotient is the float64 mean (11x faster than reordering the blocks)."""
    spatial = len(step)
    lead = data.ndim - spatial
    pad = [(0, 0)] * lead + [(0, (-n) % s) for n, s in zip(data.shape[lead:], step, strict=True)]
    if any(p for _, p in pad):
        data = np.pad(data, pad, mode="edge")
    # 8-bit sums of up to 128 voxels fit 16 bits (255 x 128 and -128 x 128); others take 32
    total = data.astype(np.int16 if data.dtype.itemsize == 1 and math.prod(step) <= 128 else np.int32)
    for axis, s in enumerate(step, start=lead):
        if s > 1:
            views = [total[(slice(None),) * axis + (slice(o, None, s),)] for o in range(s)]
            total = views[0] + views[1]
            for view in views[2:]:
                total += view
    return np.rint(total / np.float32(math.prod(step))).astype(data.dtype)


def downsample_mode(labels: np.ndarray, step: Sequence[int]) -> np.ndarray:
    """The most frequent label of each ``step`` block; ties go to the smaller label."""
    blocks = np.sort(_blocks(labels, step), axis=-1)
    counts = (blocks[..., :, None] == blocks[..., None, :]).sum(axis=-1)
    # the first of the most frequent in sorted order is the smallest of them
    return np.take_along_axis(blocks, counts.argmax(axis=-1)[..., None], axis=-1)[..., 0]


def level_log(index: int) -> str:
    return f"level{index}.log"


def build_pyramid(output: Any, levels: Sequence[Level], tile: Sequence[int], label: bool, record_dir: Path,
                  progress: ProgressOption = False) -> int:
    """Write levels 1.. of ``output`` from level 0; returns the number of blocks computed."""
    computed = 0
    bar = Progress(sum(math.prod(lv.shape) for lv in levels[1:]), "pyramid", progress, terminal=True)
    try:
        for level in levels[1:]:
            below, target = output.level(level.index - 1), output.level(level.index)
            below_shape = levels[level.index - 1].shape
            done = read_done(record_dir, level_log(level.index))
            done_log = DoneLog(record_dir, level_log(level.index))
            try:
                for block_id, box in shard_boxes(level.shape, level_shard(tile, level.shape)):
                    if block_id not in done:
                        source = source_box(box, level.step, below_shape)
                        write_level_block(below, target, box, source, level.step, label)
                        done_log.append(block_id)
                        computed += 1
                    bar.update(math.prod(b - a for a, b in box))
            finally:
                done_log.close()
    finally:
        bar.close()
    return computed


class PyramidFeed:
    """Levels 1.. of an OME-Zarr output built while level 0 is written, so the pyramid costs
    no second pass over the data (the 1x1x1 net's run: +45% with the pass, docs/BENCHMARKS.md).

    :meth:`add` takes each box written to a level with its stored values (from the writer
    threads: ``OutputArray.after_write``): the box's part of the level above is computed from
    them and written into its shard there, under that shard's lock. A shard whose box is
    covered is made durable, logged in ``level<N>.log`` and read back into the level above.

    Shards it cannot complete are left to :func:`build_pyramid`, which skips the logged ones:
    shards under boxes off the level's step grid (a box must start on it and end on it or at
    the level's edge, so that its part equals the whole level's downsampling there), and
    shards under pieces done before a resume.
    """

    def __init__(self, output: Any, levels: Sequence[Level], tile: Sequence[int], label: bool, record_dir: Path):
        self.output, self.levels, self.label, self.tile, self.record_dir = output, list(levels), label, tile, record_dir
        self.shards = [level_shard(tile, level.shape) for level in self.levels]
        self.logs = {level.index: DoneLog(record_dir, level_log(level.index)) for level in self.levels[1:]}
        self.done = {level.index: read_done(record_dir, level_log(level.index)) for level in self.levels[1:]}
        self.covered: dict[tuple[int, int], set[tuple[tuple[int, int], ...]]] = {}
        self.locks: dict[tuple[int, int], threading.Lock] = {}
        self.guard = threading.Lock()

    def add(self, box: Sequence[slice], values: np.ndarray, below: int = 0) -> None:
        """``values`` were written over ``box`` of level ``below``: carry them up a level."""
        if below + 1 >= len(self.levels):
            return
        level = self.levels[below + 1]
        target = box_above([(s.start, s.stop) for s in box], level.step, self.levels[below].shape)
        if target is None:
            return  # off the step grid: its shards are built afterwards from the level below
        reduced = (downsample_mode if self.label else downsample_mean)(values, level.step)
        for shard_id, shard in shards_meeting(level.shape, self.shards[level.index], target):
            if shard_id not in self.done[level.index]:
                self._write_part(level.index, shard_id, shard, target, reduced)

    def _write_part(self, index: int, shard_id: int, shard: tuple[tuple[int, int], ...],
                    target: tuple[tuple[int, int], ...], reduced: np.ndarray) -> None:
        part = tuple((max(a, c), min(b, d)) for (a, b), (c, d) in zip(shard, target, strict=True))
        local = tuple(slice(a - c, b - c) for (a, b), (c, _) in zip(part, target, strict=True))
        lead = () if self.label else (slice(None),)
        array = self.output.level(index)
        key = (index, shard_id)
        with self.guard:
            lock = self.locks.setdefault(key, threading.Lock())
        with lock:
            array[(*lead, *(slice(a, b) for a, b in part))] = reduced[(*lead, *local)]
            with self.guard:  # parts of one shard are disjoint; a part written again counts once
                parts = self.covered.setdefault(key, set())
                parts.add(part)
                complete = sum(math.prod(b - a for a, b in p) for p in parts) == math.prod(b - a for a, b in shard)
            if not complete:
                return
            whole = (*lead, *(slice(a, b) for a, b in shard))
            array.sync(whole)
            self.logs[index].append(shard_id)
            values = array[whole]
            with self.guard:
                del self.covered[key], self.locks[key]
        self.add(tuple(slice(a, b) for a, b in shard), values, index)

    def finish(self, build: bool, progress: ProgressOption, spec: ArraySpec) -> None:
        """Close the level logs; with level 0 complete (``build``), build what the feed could not
        (:func:`build_pyramid`)."""
        for log in self.logs.values():
            log.close()
        if not build:
            return
        try:
            build_pyramid(self.output, self.levels, self.tile, self.label, self.record_dir, progress)
        except OSError as exc:
            raise write_error(exc, spec, "all pieces done, the pyramid levels are not") from None
