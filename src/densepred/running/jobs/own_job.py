"""Own nets, file to file: planning a job of tiles, and running it in this process.

The run record beside the output (:mod:`.record`) says what is computed and which tiles
are done. When the last tile is written, ``run.json`` is marked complete and ``done.log``
removed; zarr and HDF5 outputs also carry ``densepred.complete`` in their attributes. An
output without that mark is unfinished, whatever its size.

Tiles are computed in fixed batches (``batch_size`` consecutive tile ids), and a resume
recomputes whole batches, so its numbers are bitwise those of an uninterrupted run. The same
:class:`Setup` runs on a Dask cluster in :mod:`.cluster_job`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...config import Config, load_config
from ...errors import DensePredError
from ...geometry import Geometry, Tile, TilePlan
from ...io import (
    ArraySpec,
    ChannelFirst,
    array_fingerprint,
    check_not_input,
    check_writable,
    create_output,
    file_stamp,
    open_array,
    open_output,
)
from ...io.encoding import Encoding
from ...io.ome_zarr import OmeLayout
from ...networks import config_last, create_prediction_net
from ..compute.sink import NonFinite, Sink
from ..compute.tiles import make_engine, predict_tiles
from ..planning.devices import resolve_device
from ..planning.memory_budget import memory_budget, tile_cost
from ..planning.tiling import choose_mode, footprint_for, plan_and_mode, source_geometry
from .job import JobResult, PredictJob
from .layout import ome_layout
from .lifecycle import finish, resumable_record, start_output, write_error
from .pyramid import build_pyramid
from .record import (
    RECORD_VERSION,
    DoneLog,
    check_same,
    file_hash,
    network_hash,
    read_done,
    record_path,
)

log = logging.getLogger("densepred")



@dataclass
class Setup:
    """What a job computes, after every check: the net, its input, the tiles and the record."""

    cfg: Config
    net: Any
    source: ChannelFirst
    plan: TilePlan
    engine_mode: str
    batch_size: int
    encoding: Encoding
    out_spec: ArraySpec
    record_dir: Path
    record: dict[str, Any]
    layout: OmeLayout | None  # for zarr outputs
    estimated_peak: int  # bytes, the whole process
    offset: tuple[int, ...]  # where output voxel 0 is centred without mirroring (stack: z offset 0)
    weights: Path
    input_spec: ArraySpec  # absolute, as workers on other machines open it
    mirror: bool

    @property
    def shift(self) -> tuple[int, ...]:
        """Output voxel -> the image voxel it is centred on."""
        return tuple(o + (0 if self.mirror else b) for o, b in zip(self.plan.origin, self.offset, strict=True))

    def result(self, computed: int, skipped: int) -> JobResult:
        return JobResult(self.out_spec, tuple(self.record["output"]["shape"]), len(self.plan), computed, skipped,
                         self.plan.input_tile, self.estimated_peak, self.shift)


def predict_net_to_file(job: PredictJob) -> JobResult:
    """Run a job of densepred's own net in this process: check everything, create (or reopen)
    the output, stream the tiles."""
    setup, previous = prepare(job)
    if previous is not None and previous.get("complete"):
        log.warning("%s is already complete; nothing to do", setup.out_spec)
        return setup.result(0, len(setup.plan))
    if previous is not None:
        output, done = reopen(setup), read_done(setup.record_dir)
    else:
        output, done = new_output(setup, job), set()
    engine = make_engine(setup.net, setup.engine_mode, resolve_device(job.device), setup.source.stacked)
    return _run(job, setup, engine, output, done)


def prepare(job: PredictJob) -> tuple[Setup, dict[str, Any] | None]:
    """Check the job and plan it; the interrupted run's record when resuming one."""
    if job.resume and job.overwrite:
        raise DensePredError("--resume and --overwrite exclude each other: continue the output or replace it")
    cfg = load_config(job.config)
    if cfg.network.dims == 0:
        raise DensePredError("this network classifies feature vectors (dims = 0); densepred predict needs an image net")
    weights = Path(job.weights) if job.weights is not None else config_last(cfg)
    net = create_prediction_net(cfg, param_file=weights)
    geometry: Geometry = net.geometry
    in_spec, out_spec = ArraySpec.parse(job.input), ArraySpec.parse(job.output)
    check_writable(out_spec)
    check_not_input(out_spec, in_spec)
    source = ChannelFirst(open_array(in_spec), cfg.network.in_channels, geometry.ndim)
    geometry = source_geometry(geometry, source)  # a 2D net over a stack: slice by slice
    encoding = Encoding(cfg.network.n_classes, job.dtype, _classes(job.classes), job.argmax)
    record_dir = record_path(out_spec)
    previous = resumable_record(out_spec, record_dir) if job.resume else None
    plan, engine_mode, batch_size, estimate = _plan(job, cfg, net, geometry, source, encoding, previous)
    layout = (ome_layout(job, cfg, in_spec, plan, encoding, geometry.offset, engine_mode) if out_spec.kind == "zarr"
              else None)
    record = _record(job, cfg, geometry, weights, in_spec, source, plan, engine_mode, batch_size, encoding)
    if layout is not None:
        record["output"]["levels"] = [list(level.shape) for level in layout.levels]
        record["output"]["chunks"] = list(layout.chunks(layout.levels[0]))
    if previous is not None:
        check_same(previous, record, out_spec)
    setup = Setup(cfg, net, source, plan, engine_mode, batch_size, encoding, out_spec, record_dir, record,
                   layout, estimate, geometry.offset, weights, in_spec.resolved(), job.mirror)
    return setup, previous


def _plan(job: PredictJob, cfg: Config, net: Any, geometry: Geometry, source: ChannelFirst, encoding: Encoding,
          previous: dict[str, Any] | None) -> tuple[TilePlan, str, int, int]:
    """Tiles, engine and batch size (given, else those of the interrupted run, else the config's),
    and the estimated peak memory of the run.

    A resumed run takes its recorded tile as it was planned (after clipping to the image or
    region), without checking it again for the mode: it was valid when first planned.
    """
    device = resolve_device(job.device)
    tiles = previous["tiles"] if previous else None
    # a resume keeps the engine the interrupted run chose, also when auto chose it
    mode = tiles["mode"] if tiles and job.mode in (None, "auto") else job.mode if job.mode is not None else net.mode
    batch = job.batch_size if job.batch_size is not None else (
        tiles["batch_size"] if tiles else (cfg.prediction.batch_size or 1))
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise DensePredError(f"batch size {batch!r} is invalid; expected a positive integer")
    roi = output_roi(job.roi, source.spatial_shape, geometry.offset, geometry.border_high, job.mirror)
    budget = memory_budget(job.memory_limit, device)
    footprint = footprint_for(net, source, batch, encoding.channels or 1, encoding.stored_dtype.itemsize)
    if job.tile is None and tiles is not None:
        plan = TilePlan.create(source.spatial_shape, geometry.fov, tiles["input_tile"], job.mirror, roi)
        engine_mode = choose_mode(geometry, plan.input_tile, mode, device)
    else:
        tile = job.tile if job.tile is not None else net.tile_shape
        plan, engine_mode = plan_and_mode(geometry, source.spatial_shape, tile, mode, job.mirror, budget, footprint,
                                          device, roi, source.stacked)
    estimate = budget.baseline + tile_cost(geometry, engine_mode, footprint, budget)(plan.output_tile)
    return plan, engine_mode, batch, estimate


def _record(job: PredictJob, cfg: Config, geometry: Geometry, weights: Path, in_spec: ArraySpec,
            source: ChannelFirst, plan: TilePlan, engine_mode: str, batch_size: int,
            encoding: Encoding) -> dict[str, Any]:
    """``run.json``: everything that must be the same for a resume to continue this output."""
    return {
        "version": RECORD_VERSION,
        "input": {"spec": str(ArraySpec(in_spec.path.resolve(), in_spec.key)),
                  "shape": list(source.image.shape), "dtype": str(source.dtype),
                  "fingerprint": array_fingerprint(source.image, geometry.ndim)},
        "input_file": file_stamp(in_spec.path),
        "network": {"config_sha256": network_hash(cfg), "weights_sha256": file_hash(weights),
                    "fov": list(geometry.fov), "stride": list(geometry.stride)},
        "tiles": {"input_tile": list(plan.input_tile), "output_tile": list(plan.output_tile),
                  "mode": engine_mode, "batch_size": batch_size, "mirror": job.mirror,
                  "roi": None if job.roi is None else [list(r) for r in job.roi], "count": len(plan)},
        "output": {"shape": list(_output_shape(plan, encoding)), "dtype": str(encoding.stored_dtype),
                   "classes": None if encoding.classes is None else list(encoding.classes),
                   "argmax": encoding.argmax},
        "device": resolve_device(job.device).type,
        "complete": False,
    }


def _run(job: PredictJob, setup: Setup, engine: Any, output: Any, done: set[int]) -> JobResult:
    plan, encoding, out_spec = setup.plan, setup.encoding, setup.out_spec
    tiles = list(plan.tiles())
    todo = _batches_to_run(tiles, plan, done, setup.batch_size)
    done_log = DoneLog(setup.record_dir)
    sink = Sink(output, encoding, NonFinite(setup.shift, strict=job.strict))
    written = 0

    def write(tile: Tile, probabilities: np.ndarray, part: tuple[slice, ...] | None, last: bool) -> None:
        nonlocal written
        tile_id = plan.tile_id(tile)
        if tile_id in done:
            return  # recomputed only because its batch had a missing tile
        sink.write(part or tile.owned_slices(), probabilities)
        if last:  # a streamed tile is done with its last slab
            done_log.append(tile_id)
            written += 1

    try:
        predict_tiles(engine, setup.source, plan, todo, write, batch_size=setup.batch_size, progress=job.progress)
    except OSError as exc:
        raise write_error(exc, out_spec, f"{len(done) + written} of {len(tiles)} tiles done") from None
    finally:
        done_log.close()
        output.flush()
    sink.non_finite.report()
    if setup.layout is not None and len(setup.layout.levels) > 1:
        try:
            build_pyramid(output, setup.layout.levels, setup.layout.tile, encoding.argmax, setup.record_dir,
                          job.progress)
        except OSError as exc:
            raise write_error(exc, out_spec, "all tiles done, the pyramid levels are not") from None
    finish(output, setup.record_dir, setup.record, setup.out_spec)
    return setup.result(len(todo), len(done))


def _batches_to_run(tiles: list[Tile], plan: TilePlan, done: set[int], batch_size: int) -> list[Tile]:
    """Tiles of every fixed batch that still has a missing tile, in order."""
    run: list[Tile] = []
    for first in range(0, len(tiles), batch_size):
        batch = tiles[first:first + batch_size]
        if any(plan.tile_id(t) not in done for t in batch):
            run.extend(batch)
    return run


def reopen(setup: Setup) -> Any:
    output = open_output(setup.out_spec)
    expected = tuple(setup.record["output"]["shape"])
    if output.shape != expected or output.dtype != setup.encoding.stored_dtype:
        output.close()
        raise DensePredError(f"{setup.out_spec} has shape {list(output.shape)} and dtype {output.dtype}, not what "
                             "its run record says; start again with --overwrite")
    return output


def new_output(setup: Setup, job: PredictJob) -> Any:
    """The new output and its record (:func:`.lifecycle.start_output`)."""
    return start_output(setup.out_spec, setup.record_dir, setup.record, job.overwrite, job.resume,
                        lambda: _create(setup, job))


def _create(setup: Setup, job: PredictJob) -> Any:
    plan, encoding = setup.plan, setup.encoding
    chunks = plan.output_tile if encoding.argmax else (encoding.channels, *plan.output_tile)
    return create_output(setup.out_spec, _output_shape(plan, encoding), encoding.stored_dtype, chunks,
                         attributes={"densepred": {"complete": False}}, layout=setup.layout)


def output_roi(roi: Sequence[tuple[int, int]] | None, image: Sequence[int], offset: Sequence[int],
               border_high: Sequence[int], mirror: bool) -> list[tuple[int, int]] | None:
    """A region of interest in image coordinates (voxel centres) -> the same voxels in the dense
    output. Without mirroring only centres at least the border away from the edges have a window."""
    if roi is None:
        return None
    roi = [(int(a), int(b)) for a, b in roi]
    if mirror:
        low, high = [0] * len(image), list(image)
    else:
        low, high = list(offset), [n - b for n, b in zip(image, border_high, strict=True)]
    if len(roi) != len(image) or any(not lo <= a < b <= hi for (a, b), lo, hi in zip(roi, low, high, strict=True)):
        valid = ",".join(f"{lo}:{hi}" for lo, hi in zip(low, high, strict=True))
        given = ",".join(f"{a}:{b}" for a, b in roi)
        why = "" if mirror else " (without --mirror, voxels nearer the edge than the network's border have no window)"
        raise DensePredError(f"region of interest {given} is invalid for an image of shape {list(image)}; "
                             f"it must lie within {valid}{why}")
    shift = [0] * len(image) if mirror else list(offset)
    return [(a - s, b - s) for (a, b), s in zip(roi, shift, strict=True)]


def _classes(classes: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if classes is None else tuple(int(c) for c in classes)


def _output_shape(plan: TilePlan, encoding: Encoding) -> tuple[int, ...]:
    channels = encoding.channels
    return plan.output_shape if channels is None else (channels, *plan.output_shape)


