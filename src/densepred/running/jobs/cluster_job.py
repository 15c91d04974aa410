"""A job's pieces on a Dask cluster: which blocks are missing, submitting them, recording them.

The job is checked and planned and its output created exactly as in one process; its pieces
are then grouped into blocks of whole output shards (:class:`~densepred.geometry.BlockPlan`)
and run as futures (:func:`~densepred.running.executors.cluster.run_tasks`). Each block reads
its own input window and halo from storage (no halo exchange between workers), writes its
shards, makes them durable and returns (:mod:`densepred.running.executors.blocks`). Only this
process, the client, writes the record: a block's pieces are recorded after its task
succeeded, so the record never names data that is not on disk. Records name pieces on a grid
that does not depend on the block size (own nets: tiles; models from elsewhere: shards), so a
resume, in one process or on a cluster, with the same or another block size, computes only
what is missing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...errors import DensePredError
from ...geometry import BlockPlan, level_shard, shard_boxes, source_box
from ...io import ArraySpec
from ...io.encoding import Encoding
from ...io.ome_zarr import OmeLayout
from ..compute.model_run import ModelRun
from ..compute.sink import NonFinite
from ..executors.blocks import BlockJob, BlockResult, NetPayload, run_block, run_level_shard
from ..executors.cluster import (
    ClusterTarget,
    Task,
    box_text,
    check_resources,
    connected,
    run_tasks,
    tiles_per_block,
    worker_count,
    worker_memory_limit,
)
from ..executors.model_blocks import ModelBlockJob, ModelPayload, run_model_block
from ..planning.devices import resolve_device
from ..progress import Progress, ProgressOption
from .job import JobResult, PredictJob
from .lifecycle import finish, write_error
from .own_job import Setup, new_output, prepare, reopen
from .pyramid import level_log
from .record import DoneLog, read_done

log = logging.getLogger("densepred")

# a blend block recomputes the windows that reach into it from outside: a few shards per axis
# keep that to about (2k+1)/2k per axis
BLEND_SHARDS_PER_BLOCK = 4


def predict_net_on_cluster(job: PredictJob, client: Any = None) -> JobResult:
    """Run ``job`` (densepred's own net) on ``client``'s cluster, or on the one the job names."""
    target = ClusterTarget.of(job)
    target.check(client)
    with connected(target, client) as connection:
        job = replace(job, memory_limit=worker_memory_limit(connection, job.memory_limit))
        setup, previous = prepare(job)
        check_cluster_output(setup.out_spec)
        if previous is not None and previous.get("complete"):
            log.warning("%s is already complete; nothing to do", setup.out_spec)
            return setup.result(0, len(setup.plan))
        output, done = (reopen(setup), read_done(setup.record_dir)) if previous else (new_output(setup, job), set())
        skipped = len(done)
        computed = _run_net_blocks(connection, job, setup, done)
        if setup.layout is not None:
            run_pyramid(connection, setup.layout, setup.encoding.argmax, setup.out_spec, setup.record_dir,
                        job.progress)
        finish(output, setup.record_dir, setup.record, setup.out_spec)
    return setup.result(computed, skipped)


def check_cluster_output(spec: ArraySpec) -> None:
    if spec.kind != "zarr":
        raise DensePredError(f"a cluster run writes an OME-Zarr output (out.zarr), not {spec}: HDF5, TIFF and "
                             "NumPy files cannot take writes from several processes")


def _run_net_blocks(client: Any, job: PredictJob, setup: Setup, done: set[int]) -> int:
    """Submit every block with a missing tile and record each finished one; returns tiles computed."""
    plan = setup.plan
    blocks = BlockPlan.create(plan.output_shape, plan.output_tile,
                              tiles_per_block(job.tiles_per_block, len(plan.output_tile)), plan.fov)
    payload = client.scatter(NetPayload.from_files(setup.cfg, setup.weights), broadcast=True, hash=False)
    network = setup.cfg.network
    block_job = BlockJob(setup.input_spec, setup.out_spec.resolved(), network.in_channels, network.dims, plan,
                         blocks, setup.engine_mode, setup.batch_size, setup.encoding, job.device,
                         setup.shift, job.strict, job.threads_per_worker)

    def tasks() -> Iterator[Task]:
        for block_id, box in blocks.boxes():
            ids = blocks.tile_ids(block_id)  # C order on the tile grid, as plan.tile_id numbers tiles
            if not all(i in done for i in ids):
                owned = [i for i in ids if i in done]
                yield Task(block_id, run_block, (payload, block_job, block_id, owned),
                           f"block {block_id} (output box {box_text(box)})")

    missing = sum(math.prod(t.owned_shape) for t in plan.tiles() if plan.tile_id(t) not in done)
    title = f"predict ({setup.engine_mode}, {len(blocks)} blocks)"
    return run_recorded(client, tasks(), done, setup.record_dir, Progress(missing, title, job.progress),
                        NonFinite(setup.shift, strict=job.strict), job.device, setup.out_spec, len(plan))


def run_model_blocks(client: Any, job: PredictJob, run: ModelRun, record_dir: Path, encoding: Encoding,
                     out_spec: ArraySpec, in_spec: ArraySpec, done: set[int]) -> int:
    """Submit every block of a model's run (exact or blend) with a shard still to write, and
    record its shards; returns the shards computed."""
    per_block = job.tiles_per_block
    if per_block is None and run.mode == "blend":
        per_block = BLEND_SHARDS_PER_BLOCK
    blocks = BlockPlan.create(run.output_shape, run.shard, tiles_per_block(per_block, len(run.window)),
                              (1,) * len(run.window))
    payload = client.scatter(ModelPayload.from_job(job, run.net), broadcast=True, hash=False)
    block_job = ModelBlockJob(in_spec.resolved(), out_spec.resolved(), run.mode, run.window, run.overlap, job.tta,
                              job.device, blocks, encoding, run.contract.crop, job.strict, job.threads_per_worker,
                              run.prepared)
    todo = [(block_id, box) for block_id, box in blocks.boxes()
            if not all(i in done for i in blocks.tile_ids(block_id))]

    def tasks() -> Iterator[Task]:
        for block_id, box in todo:
            yield Task(block_id, run_model_block, (payload, block_job, block_id),
                       f"block {block_id} (output box {box_text(box)})")

    voxels = sum(math.prod(b - a for a, b in box) for _, box in todo)
    title = f"predict ({run.mode}, {len(blocks)} blocks)"
    return run_recorded(client, tasks(), done, record_dir, Progress(voxels, title, job.progress),
                        NonFinite(run.contract.crop, strict=job.strict), job.device, out_spec,
                        math.prod(blocks.tile_grid))


def run_recorded(client: Any, tasks: Iterator[Task], done: set[int], record_dir: Path, progress: Progress,
                 non_finite: NonFinite, device: str | None, out_spec: ArraySpec, total: int) -> int:
    """Run block tasks, appending the pieces each finished block made durable to ``done.log``;
    returns the pieces computed."""
    resources = {"GPU": 1} if resolve_device(device).type == "cuda" else None
    check_resources(client, resources)
    done_log, computed = DoneLog(record_dir), 0

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
        run_tasks(client, tasks, record, resources)
    except OSError as exc:
        raise write_error(exc, out_spec, f"{len(done)} of {total} pieces done") from None
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
        todo = [Task(shard_id, run_level_shard,
                     (spec, level.index, box, source_box(box, level.step, below), level.step, label),
                     f"pyramid level {level.index} shard {shard_id} (box {box_text(box)})")
                for shard_id, box in shard_boxes(level.shape, shard) if shard_id not in done]
        bar = Progress(sum(math.prod(b - a for a, b in t.args[2]) for t in todo), f"pyramid level {level.index}",
                       progress)
        done_log = DoneLog(record_dir, level_log(level.index))
        try:
            run_tasks(client, iter(todo), _level_recorder(client, done_log, bar), None, with_id=True)
        except OSError as exc:
            raise write_error(exc, out_spec, "all tiles done, the pyramid levels are not") from None
        finally:
            done_log.close()
            bar.close()


def _level_recorder(client: Any, done_log: DoneLog, bar: Progress) -> Callable[[int, int], None]:
    def record(voxels: int, shard_id: int) -> None:
        done_log.append(shard_id)
        bar.update(voxels, worker_count(client))
    return record
