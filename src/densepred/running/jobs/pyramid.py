"""Building the multiscale pyramid of an OME-Zarr output in this process, block by block, resumably.

After the last tile of level 0 is written, each further level is computed from the level
below, one shard at a time (:func:`~densepred.running.compute.downsample.write_level_block`).
Each finished block is made durable and recorded in ``level<N>.log`` beside ``done.log``, so a
resumed run continues the pyramid where it stopped and the result is byte-identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...geometry import Level, level_shard, shard_boxes, source_box
from ..compute.downsample import write_level_block
from ..progress import Progress, ProgressOption
from .record import DoneLog, read_done


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
