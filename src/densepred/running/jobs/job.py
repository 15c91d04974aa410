"""What ``densepred predict`` is asked to do (:class:`PredictJob`), what it did
(:class:`JobResult`), and the one interface every kind of model plans a job through
(:class:`PlannedJob`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ...config import MODES
from ...errors import DensePredError
from ...io import ArraySpec
from ...io.done_ids import DoneIds
from ...io.encoding import Encoding
from ...io.ome_zarr import OmeLayout, Placement
from ...progress import ProgressOption
from ..compute.model_run import MODES as MODEL_MODES
from ..compute.window_options import MODEL_ONLY_DEFAULTS, refuse_for_own_nets, whole
from ..executors.cluster import Task


@dataclass(frozen=True)
class PredictJob:
    """Everything ``densepred predict`` was asked to do."""

    config: str | Path | None
    input: str
    output: str
    weights: str | Path | None = None
    tile: Sequence[int] | None = None
    mode: str | None = None
    mirror: bool = False
    device: str | None = None
    precision: str = "float32"  # the network's arithmetic: float32, tf32, bfloat16, float16
    dtype: str = "float32"
    argmax: bool = False
    classes: Sequence[int] | None = None
    roi: Sequence[tuple[int, int]] | None = None
    batch_size: int | None = None
    resume: bool = False
    overwrite: bool = False
    progress: ProgressOption = True  # or a callback that may cancel (:mod:`densepred.progress`)
    strict: bool = False  # refuse input windows with NaN or inf instead of warning
    levels: int | None = None  # OME-Zarr pyramid levels (1 = none); default down to ~256 per side
    chunks: Sequence[int] | int | None = None  # OME-Zarr inner chunks, HDF5 chunks (default about 64 per side)
    voxel_size: Sequence[float] | None = None  # physical voxel size (z, y, x); default the input's
    unit: str | None = None  # UDUNITS space unit of voxel_size, e.g. "nanometer"
    memory_limit: int | None = None  # bytes the process may use at its peak (default: half the available)
    workers: int | None = None  # run on a local Dask cluster of this many worker processes
    threads_per_worker: int | None = None  # torch threads per worker (default: the cores shared out)
    scheduler: str | None = None  # or on the existing Dask cluster at this address
    scheduler_file: str | Path | None = None  # or at the address in this scheduler file
    tiles_per_block: Sequence[int] | int | None = None  # tiles per cluster task on each axis (default 1)
    # a model written elsewhere instead of the config's net (:mod:`.model_job`)
    model: str | None = None  # package.module:Class or path/to/file.py:Class
    model_kwargs: dict[str, Any] | str | None = None  # its keyword arguments (a dict or JSON)
    model_file: str | Path | None = None  # or a model file: .pt2 (unpickles: trusted files only), TorchScript, ONNX
    trust_imports: Sequence[str] = ()  # packages a bioimage.io description may import its architecture from
    dims: int = 3  # the model's spatial dimensions
    in_channels: int = 1
    activation: str | None = None  # softmax, sigmoid or identity; None: softmax, or a bioimage.io model's own
    overlap: float = 0.5  # blend mode: window overlap
    tta: str | Sequence[int] | None = None  # "flips" or the axes to flip
    output_tensor: str | int | None = None  # of a model with several outputs: the name or index to predict
    weights_format: str | None = None  # a bioimage.io package's: pytorch_state_dict, torchscript or onnx
    contract: dict[str, Any] | None = None  # tiling contract fields given, not probed: factor, smallest, context
    output_index: int | str | None = None  # filled in by planning: which of the model's outputs runs


@dataclass
class JobResult:
    output: ArraySpec
    shape: tuple[int, ...]
    tiles: int
    computed: int
    skipped: int
    input_tile: tuple[int, ...] = ()
    estimated_peak: int = 0  # bytes: the memory estimate the tile was chosen by
    origin: tuple[int, ...] = ()  # the input voxel that output voxel 0 is centred on


COUNTS = ("workers", "threads_per_worker", "batch_size", "levels")  # positive integers, NumPy's too


def check_job(job: PredictJob) -> None:
    """The fields a Python caller may get wrong in type or range, each refused in one line
    (file specs, tiles, dtypes and the like are checked where they are read)."""
    if job.config is None and job.model is None and job.model_file is None:
        raise DensePredError("the job names no network: give a config (PredictJob('net.toml', ...)), or model= or "
                             "model_file= for a model written elsewhere")
    for name in ("mirror", "argmax", "resume", "overwrite", "strict"):
        if not isinstance(getattr(job, name), bool):
            raise DensePredError(f"{name} = {getattr(job, name)!r} is invalid; expected True or False")
    for name in COUNTS:
        value = getattr(job, name)
        if value is not None and (not whole(value) or value < 1):
            raise DensePredError(f"{name} = {value!r} is invalid; expected a positive integer"
                                 + (" (1 = no pyramid)" if name == "levels" else ""))
    model = job.model is not None or job.model_file is not None
    modes = MODEL_MODES if model else MODES
    if job.mode is not None and job.mode not in modes:
        raise DensePredError(f"mode {job.mode!r} is invalid for {'a model from elsewhere' if model else 'a config'}"
                             f"'s net; valid: {', '.join(modes)}")
    if not isinstance(job.overlap, int | float) or not 0 <= job.overlap < 1:
        raise DensePredError(f"overlap {job.overlap!r} is invalid; expected a fraction in [0, 1)")
    _refuse_the_other_kinds_fields(job, model)
    _check_paths_and_fields(job)


def _check_paths_and_fields(job: PredictJob) -> None:
    for name in ("weights", "model_file"):
        value = getattr(job, name)
        if value is not None and not isinstance(value, str | os.PathLike):
            raise DensePredError(f"{name} = {value!r} is invalid; expected a file path")
    per_block = job.tiles_per_block
    if per_block is not None and not all(whole(n) and n > 0 for n in (
            per_block if isinstance(per_block, list | tuple) else [per_block])):
        raise DensePredError(f"tiles_per_block {per_block!r} is invalid; expected a positive integer or one per axis")
    if job.contract is not None and not isinstance(job.contract, dict):
        raise DensePredError(f"contract {job.contract!r} is invalid; expected a dict of tiling contract fields, like "
                             "{'factor': 16, 'context': 44}")
    if job.classes is not None and (isinstance(job.classes, str) or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in job.classes)):
        raise DensePredError(f"classes {job.classes!r} are invalid; expected a list of class indices like [1] or "
                             "[0, 2]")
    if job.roi is not None and (isinstance(job.roi, str) or not all(
            isinstance(r, list | tuple) and len(r) == 2 and all(isinstance(v, int) for v in r) for r in job.roi)):
        raise DensePredError(f"roi {job.roi!r} is invalid; expected a (start, stop) pair of integers per axis, like "
                             "[(0, 64), (0, 2048), (0, 2048)]")


def _refuse_the_other_kinds_fields(job: PredictJob, model: bool) -> None:
    """Fields that only one kind of net uses are refused for the other, not ignored."""
    if model:
        given = [name for name, value in (("mirror", job.mirror), ("roi", job.roi), ("batch_size", job.batch_size))
                 if value not in (None, False)]
        if given:
            raise DensePredError(f"{', '.join(given)} is for densepred's own nets; a model from elsewhere takes mode "
                                 "exact or blend, tile (its window), overlap and tta")
    else:
        refuse_for_own_nets(**{name: getattr(job, name) for name in MODEL_ONLY_DEFAULTS if hasattr(job, name)})


@dataclass
class BlockWork:
    """A job's missing pieces as cluster tasks, each a block of whole output shards."""

    tasks: Iterator[Task]
    voxels: int  # output voxels the tasks write, for the progress bar
    title: str
    shift: tuple[int, ...]  # output voxel -> the image voxel it is centred on, for messages
    total: int  # the job's pieces in all


class Pieces(Protocol):
    """How one kind of model computes a job's pieces: in this process, or as cluster blocks."""

    def compute(self, job: PredictJob, output: Any, done: DoneIds) -> int:
        """Compute the pieces not in ``done`` in this process, into ``output``, logging each
        finished one; returns the pieces computed."""
        ...

    def blocks(self, job: PredictJob, client: Any, done: DoneIds) -> BlockWork:
        """The cluster tasks that compute the pieces not in ``done``."""
        ...


@dataclass
class PlannedJob:
    """A checked and planned job, whatever its model: its pieces, its record and its output.
    :func:`.file_job.predict_to_file` runs any such plan in this process or on a cluster,
    resumes it and finishes it, without asking which kind of model it has.

    Pieces are numbered on a grid that depends on neither the executor nor a cluster's block
    size; ``done.log`` names the finished ones.
    """

    work: Pieces
    out_spec: ArraySpec
    record_dir: Path
    record: dict[str, Any]  # run.json
    previous: dict[str, Any] | None  # the interrupted run's record, when resuming one
    encoding: Encoding
    layout: OmeLayout | None  # zarr outputs
    shape: tuple[int, ...]  # the output's (classes first, unless argmax)
    chunks: tuple[int, ...]  # the output's chunks (a zarr output's shards), one piece's box or a divisor
    pieces: int
    window: tuple[int, ...]  # the input tile or window
    origin: tuple[float, ...]  # the input voxel that output voxel 0 is centred on
    estimated_peak: int = 0  # bytes
    input_fingerprint: Callable[[], str] | None = None  # the input's, read now, as run.json has it
    placement: Placement | None = None  # where an HDF5 or TIFF output's voxels lie, where the input or job says

    def result(self, computed: int, skipped: int) -> JobResult:
        return JobResult(self.out_spec, self.shape, self.pieces, computed, skipped, self.window, self.estimated_peak,
                         self.origin)
