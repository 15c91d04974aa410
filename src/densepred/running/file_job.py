"""``densepred predict``: a volume on disk to a prediction on disk, resumable after a crash.

Beside the output lives a run record, ``<output>.densepred/`` (for ``out.h5:pred``,
``out.h5.pred.densepred/``), with

* ``run.json`` - what is being computed: input, output, network, weights, tiles. A resume
  whose record differs is refused, so an output never mixes two predictions.
* ``done.log`` - one tile id per line, appended (and fsynced) only after the tile's data
  was written and flushed. ``--resume`` computes the tiles not listed.

When the last tile is written, ``run.json`` is marked complete and ``done.log`` removed;
zarr and HDF5 outputs also carry ``densepred.complete`` in their attributes. An output
without that mark is unfinished, whatever its size.

Tiles are computed in fixed batches (``batch_size`` consecutive tile ids), and a resume
recomputes whole batches, so its numbers are bitwise those of an uninterrupted run.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, load_config
from ..errors import DensePredError
from ..files import atomic_write_text
from ..geometry import Tile, TilePlan
from ..io import ArraySpec, ChannelFirst, open_array
from ..io.outputs import OUTPUT_DTYPES, check_writable, create_output, open_output, output_exists, remove_output
from ..networks import DenseEngine, create_prediction_net, last_path
from .devices import resolve_device
from .predict import choose_mode, plan_tiles, predict_tiles

log = logging.getLogger("densepred")

RECORD_VERSION = 1


@dataclass(frozen=True)
class Encoding:
    """How probabilities become stored values: a class subset, a dtype, or argmax labels."""

    n_classes: int
    dtype: str = "float32"
    classes: tuple[int, ...] | None = None
    argmax: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in OUTPUT_DTYPES:
            raise DensePredError(f"dtype {self.dtype!r} is invalid; valid: {', '.join(OUTPUT_DTYPES)}")
        if self.argmax and self.classes is not None:
            raise DensePredError("--argmax stores one label per voxel; it cannot be combined with --classes")
        if self.classes is not None:
            bad = [c for c in self.classes if not 0 <= c < self.n_classes]
            if bad or not self.classes or len(set(self.classes)) != len(self.classes):
                raise DensePredError(f"classes {list(self.classes)} are invalid; expected distinct class "
                                     f"indices in 0..{self.n_classes - 1}")

    @property
    def channels(self) -> int | None:
        """Channels of the stored array; None for argmax labels (no channel axis)."""
        if self.argmax:
            return None
        return len(self.classes) if self.classes is not None else self.n_classes

    @property
    def stored_dtype(self) -> np.dtype:
        if self.argmax:
            return np.dtype(np.uint8 if self.n_classes <= 256 else np.uint16)
        return np.dtype(self.dtype)

    def __call__(self, probabilities: np.ndarray) -> np.ndarray:
        """``(K, *box)`` float32 probabilities -> stored values."""
        if self.argmax:
            return probabilities.argmax(axis=0).astype(self.stored_dtype)
        if self.classes is not None:
            probabilities = probabilities[list(self.classes)]
        if self.dtype == "uint8":
            return np.rint(probabilities * 255).astype(np.uint8)
        return probabilities.astype(self.stored_dtype, copy=False)


@dataclass(frozen=True)
class PredictJob:
    """Everything ``densepred predict`` was asked to do."""

    config: str | Path
    input: str
    output: str
    weights: str | Path | None = None
    tile: Sequence[int] | None = None
    mode: str | None = None
    mirror: bool = False
    device: str | None = None
    dtype: str = "float32"
    argmax: bool = False
    classes: Sequence[int] | None = None
    roi: Sequence[tuple[int, int]] | None = None
    batch_size: int | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True


@dataclass
class JobResult:
    output: ArraySpec
    shape: tuple[int, ...]
    tiles: int
    computed: int
    skipped: int


def predict_to_file(job: PredictJob) -> JobResult:
    """Run a prediction job: check everything, create (or reopen) the output, stream the tiles."""
    if job.resume and job.overwrite:
        raise DensePredError("--resume and --overwrite exclude each other: continue the output or replace it")
    cfg = load_config(job.config)
    if cfg.network.dims == 0:
        raise DensePredError("this network classifies feature vectors (dims = 0); densepred predict needs an image net")
    weights = Path(job.weights) if job.weights is not None else _default_weights(cfg)
    net = create_prediction_net(cfg, param_file=weights)
    geometry = net.geometry
    assert geometry is not None
    in_spec = ArraySpec.parse(job.input)
    source = ChannelFirst(open_array(in_spec), cfg.network.in_channels, geometry.ndim)
    device = resolve_device(job.device)
    encoding = Encoding(cfg.network.n_classes, job.dtype, _classes(job.classes), job.argmax)
    out_spec = ArraySpec.parse(job.output)
    check_writable(out_spec)
    _check_not_input(out_spec, in_spec)
    record_dir = record_path(out_spec)

    previous = _resumable_record(out_spec, record_dir) if job.resume else None
    tile, mode, batch_size = _settings(job, cfg, net, previous)
    roi = output_roi(job.roi, source.spatial_shape, geometry.offset, geometry.border_high, job.mirror)
    plan = plan_tiles(geometry, source.spatial_shape, tile, mode, job.mirror, device, roi)
    engine_mode = choose_mode(geometry, plan.input_tile, mode, device)
    record = {
        "version": RECORD_VERSION,
        "input": {"spec": str(ArraySpec(in_spec.path.resolve(), in_spec.key)),
                  "shape": list(source.image.shape), "dtype": str(source.dtype)},
        "network": {"config_sha256": _network_hash(cfg), "weights_sha256": _file_hash(weights),
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
    if previous is not None:
        _check_same(previous, record, out_spec)
        if previous.get("complete"):
            log.warning("%s is already complete; nothing to do", out_spec)
            return JobResult(out_spec, tuple(record["output"]["shape"]), len(plan), 0, len(plan))
        done = read_done(record_dir)
    if previous is not None and (done or output_exists(out_spec)):
        output = open_output(out_spec)
        if output.shape != tuple(record["output"]["shape"]) or output.dtype != encoding.stored_dtype:
            output.close()
            raise DensePredError(f"{out_spec} has shape {list(output.shape)} and dtype {output.dtype}, not what its "
                                 "run record says; start again with --overwrite")
    else:  # a new run, or one killed before its output existed
        replace = job.overwrite or previous is not None
        output = _new_output(out_spec, record_dir, plan, encoding, geometry.offset, job, record, replace)
        done = set()

    engine = DenseEngine(net, engine_mode, device)
    return _run(job, engine, source, plan, encoding, output, out_spec, record_dir, record, done, batch_size)


def _run(job: PredictJob, engine: DenseEngine, source: ChannelFirst, plan: TilePlan, encoding: Encoding,
         output: Any, out_spec: ArraySpec, record_dir: Path, record: dict[str, Any], done: set[int],
         batch_size: int) -> JobResult:
    tiles = list(plan.tiles())
    todo = _batches_to_run(tiles, plan, done, batch_size)
    log_file = open(record_dir / "done.log", "a", encoding="ascii")  # noqa: SIM115 - closed below
    written = 0

    def write(tile: Tile, probabilities: np.ndarray) -> None:
        nonlocal written
        tile_id = plan.tile_id(tile)
        if tile_id in done:
            return  # recomputed only because its batch had a missing tile
        box = tile.owned_slices() if encoding.argmax else (slice(None), *tile.owned_slices())
        output[box] = encoding(probabilities)
        output.flush()
        log_file.write(f"{tile_id}\n")
        log_file.flush()
        os.fsync(log_file.fileno())
        written += 1

    try:
        predict_tiles(engine, source, plan, todo, write, batch_size=batch_size, progress=job.progress)
    except OSError as exc:
        raise _write_error(exc, out_spec, len(done) + written, len(tiles)) from None
    finally:
        log_file.close()
        output.flush()
    try:
        output.set_attributes({"densepred": {"complete": True, **_provenance(record)}})
        output.close()
        record["complete"] = True
        _write_record(record_dir, record)
        (record_dir / "done.log").unlink(missing_ok=True)
    except OSError as exc:
        raise _write_error(exc, out_spec, len(tiles), len(tiles)) from None
    return JobResult(out_spec, tuple(record["output"]["shape"]), len(tiles), len(todo), len(done))


def _batches_to_run(tiles: list[Tile], plan: TilePlan, done: set[int], batch_size: int) -> list[Tile]:
    """Tiles of every fixed batch that still has a missing tile, in order."""
    run: list[Tile] = []
    for first in range(0, len(tiles), batch_size):
        batch = tiles[first:first + batch_size]
        if any(plan.tile_id(t) not in done for t in batch):
            run.extend(batch)
    return run


# -- the run record ---------------------------------------------------------------------------

def record_path(spec: ArraySpec) -> Path:
    """The run-record folder beside an output."""
    suffix = f".{spec.key.replace('/', '.')}" if spec.key else ""
    return spec.path.with_name(spec.path.name + suffix + ".densepred")


def read_done(record_dir: Path) -> set[int]:
    """Tile ids recorded as done; a line cut short by a crash is ignored."""
    try:
        text = (record_dir / "done.log").read_text(encoding="ascii")
    except FileNotFoundError:
        return set()
    lines = text.split("\n")
    return {int(line) for line in lines[:-1] if line.strip().isdigit()}  # the last piece lacks its newline


def _resumable_record(spec: ArraySpec, record_dir: Path) -> dict[str, Any] | None:
    """The interrupted run's record; None when there is nothing to resume (a fresh start).

    A record folder without ``run.json`` is a run killed before it began: nothing of it counts.
    An output without any record was not written by ``densepred predict`` and is not touched.
    """
    path = record_dir / "run.json"
    if not path.exists():
        if output_exists(spec) and not record_dir.exists():
            raise DensePredError(f"cannot resume {spec}: it has no run record ({path}), so it was not written "
                                 "by densepred predict; choose another output, or pass --overwrite")
        if record_dir.exists():
            if output_exists(spec):
                remove_output(spec)
            shutil.rmtree(record_dir, ignore_errors=True)
        log.info("nothing to resume for %s; starting", spec)
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DensePredError(f"cannot read the run record {path}: {exc}; start again with --overwrite") from None


def _write_record(record_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_text(record_dir / "run.json", json.dumps(record, indent=2) + "\n")


def _check_same(previous: dict[str, Any], current: dict[str, Any], spec: ArraySpec) -> None:
    """Refuse a resume that would mix two different predictions in one output."""
    for section, what in (("input", "input"), ("network", "network config or weights"),
                          ("tiles", "tiling (tile, mode, batch size, mirror or region)"), ("output", "output format")):
        before, now = previous.get(section), current[section]
        if before != now:
            keys = sorted(k for k in set(before or {}) | set(now) if (before or {}).get(k) != now.get(k))
            details = "; ".join(f"{k}: {(before or {}).get(k)} before, {now.get(k)} now" for k in keys[:3])
            raise DensePredError(f"cannot resume {spec}: the {what} differs from the interrupted run ({details}); "
                                 "rerun with the same settings, or start again with --overwrite")
    if previous.get("device") != current["device"]:
        log.warning("resuming on %s a run started on %s: the new tiles may differ in the last bits",
                    current["device"], previous.get("device"))


def _provenance(record: dict[str, Any]) -> dict[str, Any]:
    return {"input": record["input"]["spec"], "network": record["network"], "tiles": record["tiles"]}


# -- helpers --------------------------------------------------------------------------------------

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


def _settings(job: PredictJob, cfg: Config, net: Any, previous: dict[str, Any] | None) -> tuple[Any, str, int]:
    """Tile, mode and batch size: given, else those of the interrupted run, else the config's."""
    tiles = previous["tiles"] if previous else None
    tile = job.tile if job.tile is not None else (tiles["input_tile"] if tiles else net.tile_shape)
    mode = job.mode if job.mode is not None else (tiles["mode"] if tiles else net.mode)
    batch = job.batch_size if job.batch_size is not None else (
        tiles["batch_size"] if tiles else (cfg.prediction.batch_size or 1))
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise DensePredError(f"batch size {batch!r} is invalid; expected a positive integer")
    return tile, mode, batch


def _default_weights(cfg: Config) -> Path:
    if cfg.save_dir is None:
        raise DensePredError("the config has no save_dir; pass --weights FILE")
    return last_path(cfg.save_dir, cfg.name)


def _classes(classes: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if classes is None else tuple(int(c) for c in classes)


def _output_shape(plan: TilePlan, encoding: Encoding) -> tuple[int, ...]:
    channels = encoding.channels
    return plan.output_shape if channels is None else (channels, *plan.output_shape)


def _new_output(spec: ArraySpec, record_dir: Path, plan: TilePlan, encoding: Encoding, offset: Sequence[int],
                job: PredictJob, record: dict[str, Any], replace: bool) -> Any:
    """Create the run record, then the output (marked incomplete), replacing old ones if allowed."""
    if output_exists(spec) or record_dir.exists():
        if not replace:
            raise DensePredError(f"{spec} already exists; pass --overwrite to replace it, or --resume to "
                                 "finish an interrupted run")
        # the record goes first: a crash while the old output is being deleted must not leave
        # a half-deleted output that a record still calls complete
        (record_dir / "run.json").unlink(missing_ok=True)
        shutil.rmtree(record_dir, ignore_errors=True)
        remove_output(spec)
    try:
        record_dir.mkdir(parents=True)
    except OSError as exc:
        raise DensePredError(f"cannot create {record_dir}: {exc.strerror}") from None
    _write_record(record_dir, record)
    spatial_axes = list("zyx"[3 - len(plan.output_shape):])
    axes = spatial_axes if encoding.argmax else ["c", *spatial_axes]
    chunks = plan.output_tile if encoding.argmax else (encoding.channels, *plan.output_tile)
    # where output voxel 0 sits in the image, in voxels: the ROI start, plus the border without mirroring
    start = [o + (0 if job.mirror else b) for o, b in zip(plan.origin, offset, strict=True)]
    translation = start if encoding.argmax else [0, *start]
    output = create_output(spec, _output_shape(plan, encoding), encoding.stored_dtype, chunks, axes,
                           translation=translation)
    output.set_attributes({"densepred": {"complete": False}})
    return output


def _write_error(exc: OSError, spec: ArraySpec, done: int, total: int) -> DensePredError:
    why = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return DensePredError(f"writing {spec} failed: {why}; the output is incomplete ({done} of {total} tiles "
                          "done); fix the cause and rerun with --resume")


def _check_not_input(out_spec: ArraySpec, source: ArraySpec) -> None:
    if out_spec.path.resolve() == source.path.resolve() and (out_spec.key == source.key or out_spec.kind != "hdf5"):
        raise DensePredError(f"the output {out_spec} is the input; choose another output")


def _network_hash(cfg: Config) -> str:
    network = dict(cfg.source.get("network", {}))
    return hashlib.sha256(json.dumps(network, sort_keys=True, default=str).encode()).hexdigest()


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()
