"""Own nets, file to file: a job of tiles (a :class:`~.job.PlannedJob` whose pieces are
:class:`NetTiles`), computed in this process or as blocks of tiles on a cluster.

The run record beside the output (:mod:`densepred.io.run_record`) says what is computed and which tiles
are done. When the last tile is written, ``run.json`` is marked complete and ``done.log``
removed; zarr and HDF5 outputs also carry ``densepred.complete`` in their attributes. An
output without that mark is unfinished, whatever its size.

Tiles are computed in fixed batches (``batch_size`` consecutive tile ids), and a resume
recomputes whole batches, so its numbers are bitwise those of an uninterrupted run. The same
:class:`NetTiles` gives its tiles to a Dask cluster in blocks (:meth:`NetTiles.blocks`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...config import Config, load_config
from ...errors import DensePredError
from ...geometry import BlockPlan, Geometry, Tile, TilePlan
from ...io import (
    ArraySpec,
    ChannelFirst,
    array_fingerprint,
    input_stamp,
    open_array,
)
from ...io.done_ids import DoneIds
from ...io.encoding import Encoding
from ...io.output_checks import check_files, record_folder
from ...io.run_record import RECORD_VERSION, DoneLog, check_same, file_hash, network_hash, resumable_record
from ...networks import config_last, create_prediction_net
from ...networks.devices import resolve_device
from ...networks.precision import Precision, precision_for
from ...networks.precision_speed import refuse_if_slower
from ..compute.sink import NonFinite, Sink, tile_writes
from ..compute.tiles import make_engine, predict_tiles
from ..executors.blocks import BlockJob, NetPayload, run_block
from ..executors.cluster import Task, box_text, shared, tiles_per_block
from ..planning.tiling import job_tiles, writer_threads
from .job import BlockWork, PlannedJob, PredictJob
from .layout import check_output_options, file_chunks, file_placement, ome_layout, output_start, written_tile

log = logging.getLogger("densepred")



@dataclass
class NetTiles:
    """How an own net's job computes its tiles (:class:`~.job.Pieces`)."""

    cfg: Config
    net: Any
    source: ChannelFirst
    plan: TilePlan
    engine_mode: str
    batch_size: int
    encoding: Encoding
    out_spec: ArraySpec
    record_dir: Path
    weights: Path
    input_spec: ArraySpec  # absolute, as workers on other machines open it
    device: torch.device
    precision: Precision
    shift: tuple[int, ...]  # output voxel -> the image voxel it is centred on

    def compute(self, job: PredictJob, output: Any, done: DoneIds) -> int:
        """The tiles of every fixed batch with a tile not yet done, streamed through the
        read/compute/write pipeline; each tile is logged once written."""
        plan = self.plan
        engine = make_engine(self.net, self.engine_mode, self.device, self.source.stacked, self.precision)
        todo = plan.batches_to_run(done, self.batch_size)
        sink = Sink(output, self.encoding, NonFinite(self.shift, strict=job.strict))
        write = tile_writes(sink, plan.tile_id, done)

        def finished(tile: Tile) -> None:  # every write of the tile has returned: durable, or at the log's commit
            if (tile_id := plan.tile_id(tile)) not in done:
                done_log.append(tile_id)

        try:
            # the output's shards (zarr), chunks (HDF5, written under h5py's lock) or bytes (a
            # memory map) are never shared by two tiles (or a stream's columns): several writers
            # may finish tiles at once. A memory map's tiles are made durable in groups (the log's
            # commit), the last group on the way out
            with DoneLog(self.record_dir, commit=output.defer_syncs()) as done_log:
                predict_tiles(engine, self.source, plan, todo, write, batch_size=self.batch_size,
                              progress=job.progress, writers=writer_threads(self.device),
                              stream_unit=output.write_unit(len(plan.output_tile)), finished=finished)
        finally:
            output.flush()
        sink.non_finite.report()
        return len(todo)

    def blocks(self, job: PredictJob, client: Any, done: DoneIds) -> BlockWork:
        """Blocks of whole tiles (``--tiles-per-block``); a block skips the tiles already done."""
        plan = self.plan
        blocks = BlockPlan.create(plan.output_shape, plan.output_tile,
                                  tiles_per_block(job.tiles_per_block, len(plan.output_tile)), plan.fov)
        payload = shared(client, NetPayload.from_files(self.cfg, self.weights))
        network = self.cfg.network
        block_job = BlockJob(self.input_spec, self.out_spec.resolved(), network.in_channels, network.dims, plan,
                             blocks, self.engine_mode, self.batch_size, self.encoding, job.device,
                             self.shift, job.strict, job.threads_per_worker, self.precision.name)

        def tasks() -> Iterator[Task]:
            for block_id, box in blocks.boxes():
                ids = blocks.tile_ids(block_id)  # C order on the tile grid, as plan.tile_id numbers tiles
                if not all(i in done for i in ids):
                    owned = [i for i in ids if i in done]
                    yield Task(block_id, run_block, (payload, block_job, block_id, owned),
                               f"block {block_id} (output box {box_text(box)})")

        missing = plan.batches_to_run(done, 1).voxels()  # the tiles not done
        return BlockWork(tasks(), missing, f"predict ({self.engine_mode}, {len(blocks)} blocks)", self.shift,
                         len(plan))


def plan_net(job: PredictJob) -> PlannedJob:
    """Check the job and plan it (with the interrupted run's record when resuming one)."""
    cfg = load_config(job.config)
    if cfg.network.dims == 0:
        raise DensePredError("this network classifies feature vectors (dims = 0); densepred predict needs an image net")
    device = resolve_device(job.device)
    precision = precision_for(job.precision, device)
    refuse_if_slower(cfg.network, device, precision.name)
    weights = Path(job.weights) if job.weights is not None else config_last(cfg)
    net = create_prediction_net(cfg, param_file=weights)
    geometry: Geometry = net.geometry
    in_spec, out_spec = ArraySpec.parse(job.input), ArraySpec.output(job.output)
    check_files(in_spec, out_spec)
    source = ChannelFirst(open_array(in_spec), cfg.network.in_channels, geometry.ndim)
    encoding = Encoding(cfg.network.n_classes, job.dtype, _classes(job.classes), job.argmax)
    check_output_options(job, out_spec, encoding)
    record_dir = record_folder(out_spec)
    previous = resumable_record(out_spec, record_dir) if job.resume else None
    pyramid = out_spec.kind == "zarr" and job.levels != 1  # OME-Zarr levels, built by the writers
    geometry, plan, engine_mode, batch_size, estimate = job_tiles(job, cfg.prediction.batch_size, net, source,
                                                                  encoding, previous, device, pyramid)
    layout = (ome_layout(job, cfg, in_spec, plan, encoding, geometry.offset, engine_mode) if out_spec.kind == "zarr"
              else None)
    fingerprint = functools.partial(array_fingerprint, source.image, geometry.ndim)  # at the start, and the end
    record = _record(job, cfg, geometry, weights, in_spec, source, plan, engine_mode, batch_size, encoding, device,
                     fingerprint())
    record["network"]["precision"] = precision.name
    if layout is not None:
        record["output"]["levels"] = [list(level.shape) for level in layout.levels]
        record["output"]["chunks"] = list(layout.chunks(layout.levels[0]))
    if previous is not None:
        check_same(previous, record, out_spec)
    shift = output_start(job, plan, geometry.offset)
    placement = file_placement(job, in_spec, out_spec, len(shift), shift)
    tiles = NetTiles(cfg, net, source, plan, engine_mode, batch_size, encoding, out_spec, record_dir, weights,
                     in_spec.resolved(), device, precision, shift)
    chunks = file_chunks(job, written_tile(plan, engine_mode), encoding)  # HDF5's, inside zarr's shards
    return PlannedJob(tiles, out_spec, record_dir, record, previous, encoding, layout,
                      _output_shape(plan, encoding), chunks, len(plan), plan.input_tile, shift, estimate,
                      fingerprint, placement)


def _record(job: PredictJob, cfg: Config, geometry: Geometry, weights: Path, in_spec: ArraySpec,
            source: ChannelFirst, plan: TilePlan, engine_mode: str, batch_size: int,
            encoding: Encoding, device: torch.device, fingerprint: str) -> dict[str, Any]:
    """``run.json``: everything that must be the same for a resume to continue this output."""
    return {
        "version": RECORD_VERSION,
        "input": {"spec": str(in_spec.resolved()),
                  "shape": list(source.image.shape), "dtype": str(source.dtype),
                  "fingerprint": fingerprint},
        "input_file": input_stamp(in_spec),
        "network": {"config_sha256": network_hash(cfg), "weights_sha256": file_hash(weights),
                    "fov": list(geometry.fov), "stride": list(geometry.stride)},
        "tiles": {"input_tile": list(plan.input_tile), "output_tile": list(plan.output_tile),
                  "mode": engine_mode, "batch_size": batch_size, "mirror": job.mirror,
                  "roi": None if job.roi is None else [list(r) for r in job.roi], "count": len(plan)},
        "output": {"shape": list(_output_shape(plan, encoding)), "dtype": str(encoding.stored_dtype),
                   "classes": None if encoding.classes is None else list(encoding.classes),
                   "argmax": encoding.argmax},
        "device": device.type,
        "complete": False,
    }


def _classes(classes: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if classes is None else tuple(int(c) for c in classes)


def _output_shape(plan: TilePlan, encoding: Encoding) -> tuple[int, ...]:
    channels = encoding.channels
    return plan.output_shape if channels is None else (channels, *plan.output_shape)




