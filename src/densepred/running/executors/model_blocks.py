"""What a cluster worker runs for a model written elsewhere: one block of whole output shards.

Exact windows own the output in ranges that start at multiples of their step
(:func:`densepred.geometry.overlap.exact_axis`), and the output's shards are a multiple of it
(:func:`~densepred.geometry.overlap.exact_shard`), so a block of whole shards is written by
the windows that own it: each worker computes the windows that reach into its block and
writes their part inside it (a window straddling two blocks is computed by both). A blended
block takes every window that meets it, keeps the weighted sum inside it and divides by the
weight sum there (:meth:`ModelRun.write_in`): the same bytes as one process.

The model travels by value (:class:`ModelPayload`: its class name and kwargs, the bytes of its
weights, of its ``.py`` file or model file (``.pt2``, TorchScript, ONNX), the output it
predicts, its dims, channels, activation, padding and the contract probed by the client), so
workers neither need the client's files nor probe again; its key covers all of it, so a
long-lived cluster never serves one run with another's model.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...geometry import BlockPlan
from ...io import ArraySpec, ChannelFirst, open_array, open_output
from ...io.encoding import Encoding
from ...networks.devices import resolve_device
from ...networks.foreign import ForeignNet, StackNet, TilingContract, from_torch
from ...networks.loading import load_model
from ...system import large_blocks_returned
from ..compute.model_run import ModelRun
from ..compute.preprocess import Prepared
from ..compute.sink import NonFinite, Sink
from .blocks import BlockResult, default_threads, reported, worker_address

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
    output_index: int | str | None = None  # which of the model's outputs (None: it has one)
    padding: tuple[str, float] = ("constant", 0.0)  # how a window beyond the image is filled

    @classmethod
    def from_job(cls, job: Any, net: ForeignNet) -> ModelPayload:
        files = {}
        for role, path in (("weights", job.weights), ("model_file", job.model_file),
                           ("source", _source_file(job.model))):
            if path is not None:
                files[role] = (Path(path).name, Path(path).read_bytes())
        flat = net.flat if isinstance(net, StackNet) else net
        digest = hashlib.sha256(repr((job.model, job.model_kwargs, job.dims, job.in_channels, job.activation,
                                      flat.contract.describe(), job.output_index, flat.padding)).encode())
        for name, data in files.values():
            digest.update(name.encode() + data)
        return cls(job.model, job.model_kwargs, files, job.dims, job.in_channels, job.activation, flat.contract,
                   digest.hexdigest(), job.output_index, flat.padding)

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
        net = from_torch(module, dims=self.dims, in_channels=self.in_channels, output=self.activation,
                         contract=self.contract, output_tensor=self.output_index)
        net.padding = self.padding
        return net


@dataclass(frozen=True)
class ModelBlockJob:
    """What every block of one cluster run of a model shares; ``blocks`` group whole shards."""

    input: ArraySpec
    output: ArraySpec
    mode: str  # exact or blend
    window: tuple[int, ...]  # the run's window, as its ModelRun chose it
    overlap: float
    tta: Any
    device: str | None
    blocks: BlockPlan
    encoding: Encoding
    shift: tuple[int, ...]  # output voxel -> image voxel (the crop), for messages
    strict: bool = False
    threads: int | None = None
    prepared: Prepared | None = None  # the input's preprocessing, measured once by the client
    precision: str = "float32"


def run_model_block(payload: ModelPayload, job: ModelBlockJob, block_id: int) -> BlockResult:
    """Compute block ``block_id`` (whole shards) and write it: the exact windows that reach into
    it, each its part inside, or the blended windows that meet it, summed and divided there."""
    worker, start = worker_address(), time.perf_counter()
    with reported(worker), large_blocks_returned():
        source = ChannelFirst(open_array(job.input), payload.in_channels, payload.dims)
        run = ModelRun.create(_model(payload, job), source, job.mode, job.window, job.overlap, job.tta, None,
                              job.device, job.prepared, precision=job.precision)
        box = job.blocks.box(block_id)
        sink = Sink(open_output(job.output, clean=False), job.encoding, NonFinite(job.shift, job.strict,
                                                                              run.contract.scale))
        written: list[int] = []
        try:
            run.write_in(box, lambda part, values: written.append(sink.write([slice(lo, hi) for lo, hi in part],
                                                                             values)))
        finally:
            sink.output.close()
        non_finite = sink.non_finite
    return BlockResult(block_id, tuple(job.blocks.tile_ids(block_id)), sum(written), non_finite.count, non_finite.first,
                       worker, time.perf_counter() - start)


def _source_file(model: str | None) -> str | None:
    where = (model or "").rpartition(":")[0]
    return where if where.endswith(".py") else None


def _model(payload: ModelPayload, job: ModelBlockJob) -> ForeignNet:
    """This worker process's copy of the model, built on its first block."""
    key = (payload.key, str(job.device))
    with _MODELS_LOCK:
        if key not in _MODELS:
            torch.set_num_threads(job.threads or default_threads())
            net = payload.build()
            net.model.to(resolve_device(job.device))
            _MODELS[key] = net
        return _MODELS[key]
