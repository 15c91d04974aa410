"""``densepred predict --model ... --workers N``: exact windows of a model written elsewhere on Dask.

Exact windows own the output in ranges that start at multiples of their step
(:func:`densepred.geometry.overlap.exact_axis`), and the output's shards are a multiple of it
(:func:`~densepred.geometry.overlap.exact_shard`), so a block of whole shards is written by
the windows that own it: each worker computes the windows that reach into its block and
writes their part inside it (a window straddling two blocks, at most the last on an axis, is
computed by both). Blending needs every window's neighbours and runs in one process.

The model travels by value (:class:`ModelPayload`: its class name and kwargs, the bytes of its
weights, of its ``.py`` file or ``.pt2`` program) with the contract probed here, so workers
neither need the client's files nor probe again. As for densepred's nets, only the client
writes the record: ``blocks.log`` names finished blocks and ``done.log`` the windows they
finished whole, so a resume, on a cluster or in one process, computes only what is missing.
"""

from __future__ import annotations

import hashlib
import itertools
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DensePredError
from ..geometry import BlockPlan
from ..io import ArraySpec, ChannelFirst, open_array, open_output
from ..io.encoding import Encoding
from ..networks.foreign import ForeignNet, StackNet, TilingContract, from_torch
from ..networks.loading import load_model
from ..system import large_blocks_returned
from .block_task import BlockResult, _default_threads, _reported, _worker_address
from .devices import resolve_device
from .foreign_predict import ExactPiece, ForeignRun, source_of
from .input_checks import NonFinite, Sink
from .preprocess import Prepared
from .progress import Progress
from .run_record import DoneLog, read_done

BLOCKS_LOG = "blocks.log"
_MODELS: dict[tuple[str, str], ForeignNet] = {}
_MODELS_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelPayload:
    """A model written elsewhere by value: how to build it, its files' bytes, its contract."""

    model: str | None  # package.module:Class, or FILE.py:Class (the file travels in ``files``)
    kwargs: dict[str, Any] | str | None
    files: dict[str, tuple[str, bytes]]  # "weights" / "model_file" / "source" -> (file name, bytes)
    dims: int
    in_channels: int
    activation: str
    contract: TilingContract  # of the model itself (a 2D model's, also when it runs over a stack)
    key: str = field(default="")

    @classmethod
    def from_job(cls, job: Any, net: ForeignNet) -> ModelPayload:
        files = {}
        for role, path in (("weights", job.weights), ("model_file", job.model_file),
                           ("source", _source_file(job.model))):
            if path is not None:
                files[role] = (Path(path).name, Path(path).read_bytes())
        digest = hashlib.sha256(repr((job.model, job.model_kwargs)).encode())
        for name, data in files.values():
            digest.update(name.encode() + data)
        flat = net.flat if isinstance(net, StackNet) else net
        return cls(job.model, job.model_kwargs, files, job.dims, job.in_channels, job.activation, flat.contract,
                   digest.hexdigest())

    def build(self) -> ForeignNet:
        with tempfile.TemporaryDirectory(prefix="densepred-model-") as folder:
            paths = {}
            for role, (name, data) in self.files.items():
                paths[role] = Path(folder) / name
                paths[role].write_bytes(data)
            model = self.model
            if "source" in paths:
                model = f"{paths['source']}:{self.model.rpartition(':')[2]}"
            module = load_model(model, self.kwargs, paths.get("weights"), paths.get("model_file"))
        return from_torch(module, dims=self.dims, in_channels=self.in_channels, output=self.activation,
                          contract=self.contract)


@dataclass(frozen=True)
class ModelBlockJob:
    """What every block of one exact cluster run shares."""

    input: ArraySpec
    output: ArraySpec
    window: tuple[int, ...]  # the run's window, as its ForeignRun chose it
    tta: Any
    device: str | None
    blocks: BlockPlan
    encoding: Encoding
    shift: tuple[int, ...]  # output voxel -> image voxel (the crop), for messages
    strict: bool = False
    threads: int | None = None
    prepared: Prepared | None = None  # the input's preprocessing, measured once by the client


def run_model_block(payload: ModelPayload, job: ModelBlockJob, block_id: int) -> BlockResult:
    """Compute the exact windows that reach into block ``block_id`` and write their part in it."""
    worker, start = _worker_address(), time.perf_counter()
    with _reported(worker), large_blocks_returned():
        net, source = source_of(_model(payload, job), ChannelFirst(open_array(job.input), payload.in_channels,
                                                                   payload.dims))
        run = ForeignRun.create(net, source, "exact", job.window, 0.5, job.tta, None, job.device, job.prepared)
        box = block_box(job.blocks, block_id)
        pieces = run.indexed_windows()
        reach = pieces_in(run, pieces, box)
        sink, written = Sink(open_output(job.output, clean=False), job.encoding, NonFinite(job.shift, job.strict)), 0
        try:
            for index in reach:
                piece = pieces[index]
                part = tuple((max(a, lo), min(b, hi)) for (a, b), (lo, hi) in zip(piece.box, box, strict=True))
                values = run.owned(piece)[(slice(None), *(slice(lo - a, hi - a) for (a, _), (lo, hi) in
                                                           zip(piece.box, part, strict=True)))]
                written += sink.write([slice(lo, hi) for lo, hi in part], values)
        finally:
            sink.output.close()
        ids = piece_ids(pieces)
        whole = tuple(ids[i] for i in reach if _inside(pieces[i].box, box))
        non_finite = sink.non_finite
    return BlockResult(block_id, whole, written, non_finite.count, non_finite.first, worker,
                       time.perf_counter() - start)


def exact_on_cluster(client: Any, job: Any, run: ForeignRun, record_dir: Path, encoding: Encoding,
                     out_spec: ArraySpec, in_spec: ArraySpec) -> tuple[int, int]:
    """Submit every block with a window still to write; returns (blocks computed, blocks)."""
    from .distributed import _box_text, _check_resources, _Task, _tiles_per_block, _worker_count, run_tasks

    blocks = BlockPlan.create(run.output_shape, run.shard, _tiles_per_block(job.tiles_per_block, len(run.window)),
                              (1,) * len(run.window))
    pieces = run.indexed_windows()
    ids = piece_ids(pieces)
    done_pieces, done_blocks = read_done(record_dir), read_done(record_dir, BLOCKS_LOG)
    payload = client.scatter(ModelPayload.from_job(job, run.net), broadcast=True, hash=False)
    block_job = ModelBlockJob(in_spec.resolved(), out_spec.resolved(), run.window, job.tta, job.device, blocks,
                              encoding, run.contract.crop, job.strict, job.threads_per_worker, run.prepared)
    resources = {"GPU": 1} if resolve_device(job.device).type == "cuda" else None
    _check_resources(client, resources)
    todo = [(block_id, box) for block_id, box in blocks.boxes() if block_id not in done_blocks
            and not all(ids[i] in done_pieces for i in pieces_in(run, pieces, box))]

    def tasks() -> Iterator[Any]:
        for block_id, box in todo:
            yield _Task(block_id, run_model_block, (payload, block_job, block_id),
                        f"block {block_id} (output box {_box_text(box)})")

    progress = Progress(sum(int(np.prod([b - a for a, b in box])) for _, box in todo),
                        f"predict (exact, {len(blocks)} blocks)", job.progress)
    non_finite = NonFinite(run.contract.crop, strict=job.strict)
    piece_log, block_log = DoneLog(record_dir), DoneLog(record_dir, BLOCKS_LOG)

    def record(result: BlockResult) -> None:
        for piece_id in result.tile_ids:
            piece_log.append(piece_id)
        block_log.append(result.block_id)
        if result.non_finite:
            non_finite.count += result.non_finite
            non_finite.first = non_finite.first or result.first_non_finite
        progress.update(result.voxels, _worker_count(client))

    try:
        run_tasks(client, tasks(), record, resources)
    finally:
        piece_log.close()
        block_log.close()
        progress.close()
    non_finite.report()
    return len(todo), len(blocks)


def check_cluster_run(run: ForeignRun, out_spec: ArraySpec) -> None:
    """Refuse, before anything is written, what a cluster cannot run."""
    if run.mode != "exact":
        raise DensePredError("blending needs every window's neighbours and runs in one process; on a cluster use "
                             "--mode exact (or drop --workers / --scheduler)")
    if out_spec.kind != "zarr":
        raise DensePredError(f"a cluster run writes an OME-Zarr output (out.zarr), not {out_spec}: HDF5, TIFF and "
                             "NumPy files cannot take writes from several processes")


def pieces_in(run: ForeignRun, pieces: dict[tuple[int, ...], ExactPiece],
              box: Sequence[tuple[int, int]]) -> list[tuple[int, ...]]:
    """The axis indices of the windows whose owned box meets ``box``."""
    axes = run.exact_axes()
    reach = [[i for i, w in enumerate(axis) if w.own_lo < hi and w.own_hi > lo] for axis, (lo, hi) in
             zip(axes, box, strict=True)]
    return [index for index in itertools.product(*reach) if index in pieces]


def block_box(blocks: BlockPlan, block_id: int) -> tuple[tuple[int, int], ...]:
    index = blocks.block_index(block_id)
    return tuple((i * b, min((i + 1) * b, o)) for i, b, o in zip(index, blocks.block, blocks.output_shape,
                                                                  strict=True))


def piece_ids(pieces: dict[tuple[int, ...], ExactPiece]) -> dict[tuple[int, ...], int]:
    """Each window's number in C order, as the one-process run records it in ``done.log``."""
    return {index: i for i, index in enumerate(pieces)}


def _inside(inner: Sequence[tuple[int, int]], outer: Sequence[tuple[int, int]]) -> bool:
    return all(lo <= a and b <= hi for (a, b), (lo, hi) in zip(inner, outer, strict=True))


def _source_file(model: str | None) -> str | None:
    where = (model or "").rpartition(":")[0]
    return where if where.endswith(".py") else None


def _model(payload: ModelPayload, job: ModelBlockJob) -> ForeignNet:
    """This worker process's copy of the model, built on its first block."""
    key = (payload.key, str(job.device))
    with _MODELS_LOCK:
        if key not in _MODELS:
            torch.set_num_threads(job.threads or _default_threads())
            net = payload.build()
            net.model.to(resolve_device(job.device))
            _MODELS[key] = net
        return _MODELS[key]
