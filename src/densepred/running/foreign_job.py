"""``densepred predict --model ...``: a model written elsewhere, from a volume on disk to a prediction on disk.

The same promises as for densepred's own nets (:mod:`.file_job`): checks before anything is
created, a run record beside the output, resume, OME-Zarr pyramids, nothing replaced that
densepred did not write. Memory is bounded by the window, whatever the volume:

* **exact** - each window writes the box it owns straight into the output; ``done.log``
  records windows.
* **blend** - windows run in rows along z. A row's Gaussian-weighted outputs are summed into
  a float32 zarr array of its own under the run record (so the sum streams to disk, never a
  whole-volume accumulator in RAM); once a row is done, the output slab up to the next row's
  start has all its windows, and is divided by the weight sum (a product of per-axis sums),
  encoded and written. ``rows.log`` and ``slabs.log`` record progress; a row or slab cut short
  by a crash is redone from scratch, so a resumed output is byte-identical.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DensePredError
from ..io import ArraySpec, ChannelFirst, check_not_input, check_writable, create_output, file_stamp, open_array
from ..io import open_output as reopen
from ..io.encoding import Encoding
from ..io.fingerprint import array_fingerprint
from ..networks.bioimageio import is_rdf, read_rdf, zoo_net
from ..networks.foreign import ForeignNet, from_torch
from ..networks.loading import load_model
from ..system import large_blocks_returned
from .file_job import JobResult, PredictJob, _resumable_record, start_output
from .foreign_cluster import BLOCKS_LOG, check_cluster_run, exact_on_cluster
from .foreign_predict import ForeignRun, source_of
from .input_checks import NonFinite, Sink
from .output_layout import layout_for
from .progress import Progress, ProgressOption
from .pyramid import build_pyramid
from .run_record import (
    RECORD_VERSION,
    DoneLog,
    check_same,
    file_hash,
    provenance,
    read_done,
    record_path,
    write_record,
)

log = logging.getLogger("densepred")

ROWS_LOG, SLABS_LOG, ROWS = "rows.log", "slabs.log", "blend"


def predict_model_to_file(job: PredictJob, client: Any = None) -> JobResult:
    """Run ``job`` with the model it names (``job.model`` or ``job.model_file``); exact windows on
    a Dask cluster with ``client`` or the job's ``workers`` / ``scheduler`` (:mod:`.foreign_cluster`)."""
    from .distributed import uses_cluster

    cluster = client is not None or uses_cluster(job)
    if job.resume and job.overwrite:
        raise DensePredError("--resume and --overwrite exclude each other: continue the output or replace it")
    in_spec, out_spec = ArraySpec.parse(job.input), ArraySpec.parse(job.output)
    check_writable(out_spec)
    check_not_input(out_spec, in_spec)
    job, net = _job_net(job)
    net, source = source_of(net, ChannelFirst(open_array(in_spec), job.in_channels, job.dims))
    record_dir = record_path(out_spec)
    previous = _resumable_record(out_spec, record_dir) if job.resume else None
    # a resumed run keeps its recorded window (the memory budget may hold another one now)
    window = job.tile if job.tile is not None or previous is None else previous["tiles"]["window"]
    with large_blocks_returned():  # the probes' memory is returned
        run = ForeignRun.create(net, source, job.mode or "auto", window, job.overlap, job.tta, None, job.device,
                                memory_limit=job.memory_limit)
    if cluster:
        check_cluster_run(run, out_spec)
    channels = run.forward((0,) * len(run.window)).shape[0]
    encoding = Encoding(channels, job.dtype, None if job.classes is None else tuple(job.classes), job.argmax)
    layout = layout_for(job, in_spec, run.output_shape, run.shard, run.contract.crop, encoding, None,
                        "prediction") if out_spec.kind == "zarr" else None
    record = _record(job, in_spec, source, run, encoding, layout)
    if previous is not None:
        check_same(previous, record, out_spec)
        if previous.get("complete"):
            log.warning("%s is already complete; nothing to do", out_spec)
            return JobResult(out_spec, tuple(record["output"]["shape"]), 0, 0, 0, run.window, origin=run.contract.crop)
        output = reopen(out_spec)
    else:
        shape = _output_shape(run, encoding)
        chunks = run.shard if encoding.argmax else (shape[0], *run.shard)
        output = start_output(out_spec, record_dir, record, job.overwrite, job.resume, lambda: create_output(
            out_spec, shape, encoding.stored_dtype, chunks, attributes={"densepred": {"complete": False}},
            layout=layout))
    sink = Sink(output, encoding, NonFinite(run.contract.crop, strict=job.strict))
    if cluster:
        output.close()
        computed, total = _on_cluster(job, client, run, record_dir, encoding, out_spec, in_spec)
        output = reopen(out_spec)
    else:
        with large_blocks_returned():
            if run.mode == "exact":
                computed, total = _exact(run, sink, record_dir, job.progress)
            else:
                computed, total = _blend(run, sink, record_dir, job.progress)
    sink.non_finite.report()
    if layout is not None and len(layout.levels) > 1:
        build_pyramid(output, layout.levels, run.shard, encoding.argmax, record_dir, job.progress)
    _finish(output, record_dir, record)
    return JobResult(out_spec, tuple(record["output"]["shape"]), total, computed, total - computed, run.window,
                     origin=run.contract.crop)


def _job_net(job: PredictJob) -> tuple[PredictJob, ForeignNet]:
    """The job with what a bioimage.io model's description says filled in, and its net."""
    if not is_rdf(job.model_file):
        job = replace(job, activation=job.activation or "softmax")
        model = load_model(job.model, job.model_kwargs, job.weights, job.model_file)
        return job, from_torch(model, dims=job.dims, in_channels=job.in_channels, output=job.activation)
    zoo = read_rdf(job.model_file)  # its class, kwargs, weights, axes and processing
    job = replace(job, model=zoo.model, model_kwargs=zoo.kwargs, weights=str(zoo.weights), model_file=None,
                  dims=zoo.dims, in_channels=zoo.in_channels, activation=job.activation or zoo.activation)
    return job, zoo_net(load_model(job.model, job.model_kwargs, job.weights), zoo, job.activation)


def _on_cluster(job: PredictJob, client: Any, run: ForeignRun, record_dir: Path, encoding: Encoding,
                out_spec: ArraySpec, in_spec: ArraySpec) -> tuple[int, int]:
    from .distributed import _connected

    with _connected(job, client) as connected:
        return exact_on_cluster(connected, job, run, record_dir, encoding, out_spec, in_spec)


def _record(job: PredictJob, in_spec: ArraySpec, source: ChannelFirst, run: ForeignRun, encoding: Encoding,
            layout: Any) -> dict[str, Any]:
    weights = job.model_file if job.model_file is not None else job.weights
    record = {
        "version": RECORD_VERSION,
        "input": {"spec": str(in_spec.resolved()), "shape": list(np.shape(source.image)), "dtype": str(source.dtype),
                  "fingerprint": array_fingerprint(source.image, len(run.window))},
        "input_file": file_stamp(in_spec.path),
        "network": {"model": job.model or str(job.model_file), "kwargs": job.model_kwargs,
                    "weights_sha256": None if weights is None else file_hash(Path(weights)),
                    "contract": run.contract.describe(), "activation": run.net.output,
                    "preprocessing": run.prepared.describe() if run.prepared is not None else []},
        "tiles": {"mode": run.mode, "window": list(run.window), "overlap": run.overlap,
                  "tta": [list(f) for f in run.flips]},
        "output": {"shape": list(_output_shape(run, encoding)), "dtype": str(encoding.stored_dtype),
                   "classes": None if encoding.classes is None else list(encoding.classes),
                   "argmax": encoding.argmax},
        "device": run.device.type,
        "complete": False,
    }
    if layout is not None:
        record["output"]["levels"] = [list(level.shape) for level in layout.levels]
    return record


def _output_shape(run: ForeignRun, encoding: Encoding) -> tuple[int, ...]:
    return run.output_shape if encoding.channels is None else (encoding.channels, *run.output_shape)


def _exact(run: ForeignRun, sink: Sink, record_dir: Path, progress: ProgressOption) -> tuple[int, int]:
    pieces = run.exact_windows()
    done = read_done(record_dir)
    todo = [(i, p) for i, p in enumerate(pieces) if i not in done]
    bar = Progress(sum(int(np.prod([b - a for a, b in p.box])) for _, p in todo), "predict (exact)", progress)
    done_log = DoneLog(record_dir)
    try:
        for i, piece in todo:
            sink.write(_slices(piece.box), run.owned(piece))
            done_log.append(i)
            bar.update(int(np.prod([b - a for a, b in piece.box])))
    finally:
        done_log.close()
        bar.close()
    return len(todo), len(pieces)


def _blend(run: ForeignRun, sink: Sink, record_dir: Path, progress: ProgressOption) -> tuple[int, int]:
    import zarr

    out_shape, depth = run.output_shape, run.output_window[0]
    rows = [z for z in run.blend_axes()[0] if z < out_shape[0]]
    ends = [*rows[1:], out_shape[0]]
    rows_done, slabs_done = read_done(record_dir, ROWS_LOG), read_done(record_dir, SLABS_LOG)
    store = record_dir / ROWS
    bar = Progress(sum(int(np.prod(out_shape[1:])) * (e - z) for r, (z, e) in enumerate(zip(rows, ends,
                                                                                              strict=True))
                       if r not in slabs_done), "predict (blend)", progress)
    row_log, slab_log = DoneLog(record_dir, ROWS_LOG), DoneLog(record_dir, SLABS_LOG)
    computed = 0
    try:
        for r, (z, end) in enumerate(zip(rows, ends, strict=True)):
            if r in slabs_done:
                continue
            if r not in rows_done:
                _blend_row(run, zarr, store, r, z, depth)
                row_log.append(r)
                computed += 1
            covering = [(q, zq) for q, zq in enumerate(rows[:r + 1]) if zq + depth > z]
            _blend_slab(run, zarr, store, covering, z, end, sink)
            slab_log.append(r)
            bar.update(int(np.prod(out_shape[1:])) * (end - z))
            for q, zq in enumerate(rows[:r + 1]):  # rows no later slab needs
                if zq + depth <= end:
                    shutil.rmtree(store / f"row{q}", ignore_errors=True)
    finally:
        row_log.close()
        slab_log.close()
        bar.close()
    return computed, len(rows)


def _blend_row(run: ForeignRun, zarr: Any, store: Path, r: int, z: int, depth: int) -> None:
    """Row ``r``: the weighted sum of the windows starting at ``z``, into ``row<r>`` (from zeros)."""
    out_shape = run.output_shape
    rest = [[s for s in axis if s < n] for axis, n in zip(run.blend_axes()[1:], out_shape[1:], strict=True)]
    rows = None
    for starts in itertools.product(*rest):
        box, values = run.weighted((z, *starts))
        if rows is None:
            shape = (values.shape[0], min(depth, out_shape[0] - z), *out_shape[1:])
            rows = zarr.create_array(store / f"row{r}", shape=shape, dtype="float32", overwrite=True,
                                     chunks=(values.shape[0], shape[1], *run.output_window[1:]), fill_value=0)
        key = (slice(None), slice(0, box[0][1] - box[0][0]), *(slice(a, b) for a, b in box[1:]))
        rows[key] = rows[key] + values


def _blend_slab(run: ForeignRun, zarr: Any, store: Path, covering: list[tuple[int, int]], z: int, end: int,
                sink: Sink) -> None:
    """Output slab ``[z, end)``: the rows that cover it, summed and divided by the weight sum,
    one window-sized box at a time."""
    arrays = [(zarr.open_array(store / f"row{q}", mode="r"), zq) for q, zq in covering]
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


def _finish(output: Any, record_dir: Path, record: dict[str, Any]) -> None:
    output.set_attributes({"densepred": {"complete": True, **provenance(record)}})
    output.close()
    record["complete"] = True
    write_record(record_dir, record)
    for name in ("done.log", BLOCKS_LOG, ROWS_LOG, SLABS_LOG, *(p.name for p in record_dir.glob("level*.log"))):
        (record_dir / name).unlink(missing_ok=True)
    shutil.rmtree(record_dir / ROWS, ignore_errors=True)
