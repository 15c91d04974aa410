"""``densepred predict --model ...``: a model written elsewhere, from a volume on disk to a prediction on disk.

The same promises as for densepred's own nets (:mod:`.own_job`, :mod:`.file_job`): checks
before anything is created, a run record beside the output, resume, OME-Zarr pyramids, nothing
replaced that densepred did not write. Memory is bounded by the window, whatever the volume.
``done.log`` names finished output shards (:meth:`ModelRun.shard_plan`), a grid that depends on
neither the executor nor a cluster's block size, so a run started on a cluster may be resumed
in one process and the other way round:

* **exact** - each window writes the box it owns straight into the output; a shard is done
  when the last window reaching into it is written.
* **blend** - windows run in rows along z. A row's Gaussian-weighted outputs are summed into
  a float32 zarr array of its own under the run record (so the sum streams to disk, never a
  whole-volume accumulator in RAM; uncompressed, in chunks of the windows' step, read and
  written by its files: :mod:`densepred.io.local_zarr`); once a row is done, the output slab up to the next row's
  start has all its windows, and is divided by the weight sum (a product of per-axis sums),
  encoded and written. ``rows.log`` and ``slabs.log`` record progress; a row or slab cut short
  by a crash is redone from scratch, so a resumed output is byte-identical. A cluster block
  sums the same windows in the same order (:meth:`ModelRun.write_in`): the same bytes.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...geometry import BlockPlan
from ...io import ArraySpec, ChannelFirst, input_stamp, open_array
from ...io.done_ids import DoneIds
from ...io.encoding import Encoding
from ...io.fingerprint import array_fingerprint
from ...io.local_zarr import open_scratch, scratch_array
from ...io.output_checks import check_files, record_folder
from ...io.run_record import RECORD_VERSION, DoneLog, check_same, file_hash, read_done, resumable_record
from ...networks.bioimageio import is_rdf, load_zoo, read_rdf, zoo_net
from ...networks.foreign import ForeignNet, from_torch, per_axis_fields
from ...networks.loading import load_model
from ...networks.weights import parameters_hash
from ...progress import Progress, ProgressOption
from ...system import large_blocks_returned
from ..compute.model_run import ModelRun
from ..compute.sink import NonFinite, Sink
from ..executors.cluster import Task, box_text, shared, tiles_per_block
from ..executors.model_blocks import ModelBlockJob, ModelPayload, run_model_block
from .job import BlockWork, PlannedJob, PredictJob
from .layout import check_output_options, file_chunks, file_placement, layout_for

log = logging.getLogger("densepred")

ROW_CHUNKS_PER_WINDOW = 4  # the most chunks of a blend row a window spans along y or x

ROWS_LOG, SLABS_LOG, ROWS = "rows.log", "slabs.log", "blend"
# a blend block recomputes the windows that reach into it from outside: a few shards per axis
# keep that to about (2k+1)/2k per axis
BLEND_SHARDS_PER_BLOCK = 4


@dataclass
class ModelShards:
    """How a model's job computes its output shards (:class:`~.job.Pieces`): its windows
    (:class:`ModelRun`)."""

    job: PredictJob  # with what a bioimage.io description says filled in
    run: ModelRun
    encoding: Encoding
    in_spec: ArraySpec
    out_spec: ArraySpec
    record_dir: Path

    def compute(self, job: PredictJob, output: Any, done: DoneIds) -> int:
        """Exact windows or blended rows of windows, in this process."""
        sink = Sink(output, self.encoding, NonFinite(self.run.contract.crop, job.strict, self.run.contract.scale))
        with large_blocks_returned(not self.run.heap_kept):
            if self.run.mode == "exact":  # a memory map's windows made durable in groups (DoneLog)
                with DoneLog(self.record_dir, commit=output.defer_syncs()) as done_log:
                    computed = self.run.write_exact(sink, done, done_log, job.progress)
            else:
                computed = _blend(self.run, sink, self.record_dir, job.progress, done)
        sink.non_finite.report()
        return computed

    def blocks(self, job: PredictJob, client: Any, done: DoneIds) -> BlockWork:
        """Blocks of whole shards (a blend block: :data:`BLEND_SHARDS_PER_BLOCK` per axis unless
        ``--tiles-per-block`` says otherwise) with a shard still to write."""
        run, per_block = self.run, job.tiles_per_block
        if per_block is None and run.mode == "blend":
            per_block = BLEND_SHARDS_PER_BLOCK
        blocks = BlockPlan.create(run.output_shape, run.shard, tiles_per_block(per_block, len(run.window)),
                                  (1,) * len(run.window))
        payload = shared(client, ModelPayload.from_job(self.job, run.net))
        block_job = ModelBlockJob(self.in_spec.resolved(), self.out_spec.resolved(), run.mode, run.window,
                                  run.overlap, job.tta, job.device, blocks, self.encoding, run.contract.crop,
                                  job.strict, job.threads_per_worker, run.prepared, run.precision.name)

        def todo() -> Iterator[tuple[int, tuple[tuple[int, int], ...]]]:  # made as submitted: no list of every block
            return ((block_id, box) for block_id, box in blocks.boxes()
                    if not all(i in done for i in blocks.tile_ids(block_id)))

        tasks = (Task(block_id, run_model_block, (payload, block_job, block_id),
                      f"block {block_id} (output box {box_text(box)})") for block_id, box in todo())
        voxels = sum(math.prod(b - a for a, b in box) for _, box in todo())
        return BlockWork(tasks, voxels, f"predict ({run.mode}, {len(blocks)} blocks)", run.contract.crop,
                         math.prod(blocks.tile_grid))


def plan_model(job: PredictJob) -> PlannedJob:
    """Check the job and plan it (``job.memory_limit`` sizes the default window), with the
    interrupted run's record when resuming one."""
    in_spec, out_spec = ArraySpec.parse(job.input), ArraySpec.output(job.output)
    check_files(in_spec, out_spec)
    job, net = job_net(job)
    if job.model is not None and job.model_file is None and job.weights is None:
        log.warning("no --weights for --model %s: it predicts with the parameters its constructor gave it (random, "
                    "unless the class loads trained ones itself)", job.model)
    record_dir = record_folder(out_spec)
    previous = resumable_record(out_spec, record_dir) if job.resume else None
    # a resumed run keeps its recorded window and mode (the memory budget may choose others now)
    window = job.tile if job.tile is not None or previous is None else previous["tiles"]["window"]
    mode = previous["tiles"]["mode"] if previous is not None and job.mode in (None, "auto") else job.mode or "auto"
    with large_blocks_returned():  # the probes' memory is returned
        run = ModelRun.create(net, ChannelFirst(open_array(in_spec), job.in_channels, job.dims), mode, window,
                              job.overlap, job.tta, None, job.device, memory_limit=job.memory_limit,
                              window_given=job.tile is not None, precision=job.precision)
    written = run.written
    encoding = Encoding(written.channels, job.dtype, None if job.classes is None else tuple(job.classes), job.argmax)
    check_output_options(job, out_spec, encoding)
    layout = layout_for(job, in_spec, written.shape, written.shard, run.contract.crop, encoding, None,
                        "prediction", run.contract.scale) if out_spec.kind == "zarr" else None
    placement = file_placement(job, in_spec, out_spec, len(written.shape), run.contract.crop, run.contract.scale)
    shape = written.shape if encoding.argmax else (encoding.channels, *written.shape)
    fingerprint = functools.partial(array_fingerprint, run.source.image, len(run.window))  # at the start, and the end
    record = _record(job, in_spec, run, shape, encoding, layout, fingerprint())
    if previous is not None:
        check_same(previous, record, out_spec)
    shards = ModelShards(job, run, encoding, in_spec, out_spec, record_dir)
    chunks = file_chunks(job, written.shard, encoding)  # HDF5's
    return PlannedJob(shards, out_spec, record_dir, record, previous, encoding, layout, shape, chunks,
                      len(written.shards), run.window, run.contract.origin(),
                      input_fingerprint=fingerprint, placement=placement)


def job_net(job: PredictJob) -> tuple[PredictJob, ForeignNet]:
    """The job with what a bioimage.io model's description says filled in, and its net."""
    if not is_rdf(job.model_file):
        job = replace(job, activation=job.activation or "softmax", output_index=job.output_tensor)
        model = load_model(job.model, job.model_kwargs, job.weights, job.model_file)
        return job, from_torch(model, dims=job.dims, in_channels=job.in_channels, output=job.activation,
                               output_tensor=job.output_index, **per_axis_fields(job.contract, job.dims))
    rdf = job.model_file
    zoo = read_rdf(rdf, job.trust_imports, job.weights_format, job.output_tensor)  # its weights, axes, processing
    file = zoo.model_file
    job = replace(job, model=zoo.model, model_kwargs=zoo.kwargs, weights=None if file else str(zoo.weights),
                  model_file=None if file is None else str(file), dims=zoo.dims, in_channels=zoo.in_channels,
                  activation=job.activation or zoo.activation, output_index=zoo.output_index)
    return job, zoo_net(load_zoo(zoo, rdf), zoo, job.activation, **per_axis_fields(job.contract, zoo.dims))


def _record(job: PredictJob, in_spec: ArraySpec, run: ModelRun, shape: tuple[int, ...], encoding: Encoding,
            layout: Any, fingerprint: str) -> dict[str, Any]:
    weights = job.model_file if job.model_file is not None else job.weights
    source = run.source
    record = {
        "version": RECORD_VERSION,
        "input": {"spec": str(in_spec.resolved()), "shape": list(np.shape(source.image)), "dtype": str(source.dtype),
                  "fingerprint": fingerprint},
        "input_file": input_stamp(in_spec),
        "network": {"model": job.model or str(job.model_file), "kwargs": job.model_kwargs,
                    "weights_sha256": None if weights is None else file_hash(Path(weights)),
                    # without a file, the parameters the constructor gave it (random ones differ run by run)
                    "parameters_sha256": parameters_hash(run.net.model) if weights is None else None,
                    "contract": run.contract.describe(), "activation": run.net.output,
                    "output_tensor": job.output_index,
                    "preprocessing": run.prepared.describe() if run.prepared is not None else [],
                    "precision": run.precision.name},
        "tiles": {"mode": run.mode, "window": list(run.window), "overlap": run.overlap,
                  "tta": [list(f) for f in run.flips]},
        "output": {"shape": list(shape), "dtype": str(encoding.stored_dtype),
                   "classes": None if encoding.classes is None else list(encoding.classes),
                   "argmax": encoding.argmax},
        "device": run.device.type,
        "complete": False,
    }
    if layout is not None:
        record["output"]["levels"] = [list(level.shape) for level in layout.levels]
    return record


def _blend(run: ModelRun, sink: Sink, record_dir: Path, progress: ProgressOption, done: DoneIds) -> int:
    """Rows of windows along z summed into scratch arrays, and each output slab written once its
    rows are in; the shards a finished slab completes are logged. Returns the shards computed."""
    out_shape, depth = run.output_shape, run.output_window[0]
    rows = [z for z in run.blend_axes()[0] if z < out_shape[0]]
    ends = [*rows[1:], out_shape[0]]
    rows_done, slabs_done = read_done(record_dir, ROWS_LOG), read_done(record_dir, SLABS_LOG)
    store = record_dir / ROWS
    plane = math.prod(out_shape[1:])
    bar = Progress(sum(plane * (e - z) for r, (z, e) in enumerate(zip(rows, ends, strict=True))
                       if r not in slabs_done), "predict (blend)", progress)
    row_log, slab_log, done_log = DoneLog(record_dir, ROWS_LOG), DoneLog(record_dir, SLABS_LOG), DoneLog(record_dir)
    shards = run.written.shards
    layer = math.prod(shards.grid[1:])  # the shards of one z index: ids [k * layer, (k + 1) * layer)
    to_do = len(shards) - int(done.mask(len(shards)).sum())
    layers_logged = 0
    try:
        for r, (z, end) in enumerate(zip(rows, ends, strict=True)):
            if r not in slabs_done:
                if r not in rows_done:
                    _blend_row(run, store, r, z, depth)
                    row_log.append(r)
                covering = [(q, zq) for q, zq in enumerate(rows[:r + 1]) if zq + depth > z]
                _blend_slab(run, store, covering, z, end, sink)
                slab_log.append(r)
                bar.update(plane * (end - z))
                for q, zq in enumerate(rows[:r + 1]):  # rows no later slab needs
                    if zq + depth <= end:
                        shutil.rmtree(store / f"row{q}", ignore_errors=True)
            while layers_logged < shards.grid[0] and min((layers_logged + 1) * shards.block[0], out_shape[0]) <= end:
                for shard_id in range(layers_logged * layer, (layers_logged + 1) * layer):  # the slabs cover it
                    if shard_id not in done:
                        done_log.append(shard_id)
                        done.add(shard_id)
                layers_logged += 1
    finally:
        row_log.close()
        slab_log.close()
        done_log.close()
        bar.close()
    return to_do


def _blend_row(run: ModelRun, store: Path, r: int, z: int, depth: int) -> None:
    """Row ``r``: the weighted sum of the windows starting at ``z``, into ``row<r>`` (from zeros)."""
    out_shape = run.output_shape
    rest = [[s for s in axis if s < n] for axis, n in zip(run.blend_axes()[1:], out_shape[1:], strict=True)]
    rows = None

    def take(starts: tuple[int, ...], result: np.ndarray) -> None:
        nonlocal rows
        box, values = run.weigh(starts, result)
        if rows is None:
            shape = (values.shape[0], min(depth, out_shape[0] - z), *out_shape[1:])
            rows = scratch_array(store / f"row{r}", shape, (shape[0], shape[1], *row_chunks(run)))
        key = (slice(None), slice(0, box[0][1] - box[0][0]), *(slice(a, b) for a, b in box[1:]))
        rows[key] = rows[key] + values

    run.forward_each([(z, *starts) for starts in itertools.product(*rest)], take)


def row_chunks(run: ModelRun) -> tuple[int, ...]:
    """A row's chunks across y and x: the largest that the windows' steps and sizes are
    multiples of, so each window on the step grid covers whole chunks, unless that cuts a
    window into more than ``ROW_CHUNKS_PER_WINDOW`` along an axis (then the window's size:
    its sums go through zarr in parts of chunks, slower but not thousands of files)."""
    sizes = []
    for starts, window in zip(run.blend_axes()[1:], run.output_window[1:], strict=True):
        size = math.gcd(window, starts[1] - starts[0]) if len(starts) > 1 else window
        sizes.append(size if size * ROW_CHUNKS_PER_WINDOW >= window else window)
    return tuple(sizes)


def _blend_slab(run: ModelRun, store: Path, covering: list[tuple[int, int]], z: int, end: int,
                sink: Sink) -> None:
    """Output slab ``[z, end)``: the rows that cover it, summed and divided by the weight sum,
    one window-sized box at a time."""
    arrays = [(open_scratch(store / f"row{q}"), zq) for q, zq in covering]
    tiles = [range(0, n, w) for n, w in zip(run.output_shape[1:], run.output_window[1:], strict=True)]
    for corner in itertools.product(*tiles):
        box = [(z, end), *((c, min(c + w, n)) for c, w, n in zip(corner, run.output_window[1:],
                                                                 run.output_shape[1:], strict=True))]
        inner = tuple(slice(a, b) for a, b in box[1:])
        total = np.zeros((arrays[0][0].shape[0], end - z, *(b - a for a, b in box[1:])), np.float32)
        for rows, zq in arrays:  # each row adds where it reaches into the slab
            lo, hi = max(z, zq), min(end, zq + rows.shape[1])
            total[:, lo - z:hi - z] += np.asarray(rows[(slice(None), slice(lo - zq, hi - zq), *inner)])
        sink.write(_slices(box), (total / run.weight_sum(box)[None]).astype(np.float32))



def _slices(box: Sequence[tuple[int, int]]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)
