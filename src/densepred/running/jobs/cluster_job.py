"""A job's pieces on a Dask cluster: submitting the blocks, recording them, the pyramid.

The job is checked and planned and its output created exactly as in one process; the plan
then groups its pieces into blocks of whole output shards (:meth:`~.job.PlannedJob.blocks`,
:class:`~densepred.geometry.BlockPlan`), run as futures
(:func:`~densepred.running.executors.cluster.run_tasks`). Each block reads its own input
window and halo from storage (no halo exchange between workers), writes its shards, makes
them durable and returns (:mod:`densepred.running.executors.blocks`). Only this process, the
client, writes the record: a block's pieces are recorded after its task succeeded, so the
record never names data that is not on disk. Records name pieces on a grid that does not
depend on the block size (own nets: tiles; models from elsewhere: shards), so a resume, in
one process or on a cluster, with the same or another block size, computes only what is
missing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ...errors import DensePredError
from ...geometry import level_shard, shard_boxes, source_box
from ...io import ArraySpec
from ...io.done_ids import DoneIds
from ...io.ome_zarr import OmeLayout
from ...io.pyramid import level_log
from ...io.run_record import DoneLog, read_done, write_error
from ...networks.devices import resolve_device
from ...progress import Progress, ProgressOption
from ..compute.sink import NonFinite
from ..executors.blocks import BlockResult, run_level_shard
from ..executors.cluster import Task, box_text, check_resources, run_tasks, worker_count
from .job import BlockWork, PredictJob


def check_cluster_output(spec: ArraySpec) -> None:
    if spec.kind != "zarr":
        raise DensePredError(f"a cluster run writes an OME-Zarr output (out.zarr), not {spec}: HDF5, TIFF and "
                             "NumPy files cannot take writes from several processes")


def run_blocks(client: Any, work: BlockWork, done: DoneIds, record_dir: Path, job: PredictJob,
               out_spec: ArraySpec) -> int:
    """Run a job's block tasks, appending the pieces each finished block made durable to
    ``done.log``; returns the pieces computed."""
    resources = {"GPU": 1} if resolve_device(job.device).type == "cuda" else None
    check_resources(client, resources)
    done_log, computed = DoneLog(record_dir), 0
    progress = Progress(work.voxels, work.title, job.progress)
    non_finite = NonFinite(work.shift, strict=job.strict)

    def record(result: BlockResult) -> None:
        nonlocal computed
        new = [i for i in result.tile_ids if i not in done]
        for piece_id in new:
            done_log.append(piece_id)
        done.update(new)
        computed += len(new)
        non_finite.merge(result.non_finite, result.first_non_finite)
        progress.update(result.voxels, worker_count(client))

    try:
        run_tasks(client, work.tasks, record, resources)
    except OSError as exc:
        raise write_error(exc, out_spec, f"{len(done)} of {work.total} pieces done") from None
    finally:
        done_log.close()
        progress.close()
    non_finite.report()
    return computed


def run_pyramid(client: Any, layout: OmeLayout, label: bool, out_spec: ArraySpec, record_dir: Path,
                progress: ProgressOption) -> None:
    """Levels 1.. of the OME-Zarr pyramid, shard by shard on the workers, level after level."""
    levels, spec = layout.levels, out_spec.resolved()
    for level in levels[1:]:
        done = read_done(record_dir, level_log(level.index))
        below = levels[level.index - 1].shape
        shard = level_shard(layout.tile, level.shape)
        todo = functools.partial(_level_shards_to_do, level.shape, shard, done)  # made as submitted
        tasks = (Task(shard_id, run_level_shard,
                      (spec, level.index, box, source_box(box, level.step, below), level.step, label),
                      f"pyramid level {level.index} shard {shard_id} (box {box_text(box)})")
                 for shard_id, box in todo())
        bar = Progress(sum(math.prod(b - a for a, b in box) for _, box in todo()), f"pyramid level {level.index}",
                       progress)
        done_log = DoneLog(record_dir, level_log(level.index))
        try:
            run_tasks(client, tasks, _level_recorder(client, done_log, bar), None, with_id=True)
        except OSError as exc:
            raise write_error(exc, out_spec, "all tiles done, the pyramid levels are not") from None
        finally:
            done_log.close()
            bar.close()


def _level_shards_to_do(shape: tuple[int, ...], shard: tuple[int, ...],
                        done: DoneIds) -> Iterator[tuple[int, tuple[tuple[int, int], ...]]]:
    return ((shard_id, box) for shard_id, box in shard_boxes(shape, shard) if shard_id not in done)


def _level_recorder(client: Any, done_log: DoneLog, bar: Progress) -> Callable[[int, int], None]:
    def record(voxels: int, shard_id: int) -> None:
        done_log.append(shard_id)
        bar.update(voxels, worker_count(client))
    return record
