"""``densepred plan``: size a prediction before it runs: tiles, blocks, bytes, hours for N workers.

The rate of one worker comes from a measurement: the row of a ``profile.csv`` for the tile
(or its fastest row, said so), or one tile timed now on random data (``measure``). Nothing is
read but the input's shape and dtype, and nothing is written.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...config import Config, load_config, network_geometry
from ...errors import DensePredError
from ...geometry import BlockPlan, Geometry, pyramid
from ...io import ArraySpec, ChannelFirst, kept_bytes_of, open_array
from ...io.arrays import input_placement
from ...io.ome_zarr import Placement
from ...networks import DenseEngine, build_net
from ...networks.caller_state import generator, rng_kept
from ...networks.devices import resolve_device
from ...networks.memory_budget import memory_budget
from ...networks.precision import FLOAT32, Precision, precision_for
from ...networks.precision_speed import device_name, remember, slower_message
from ...progress import count_text, duration_text, shape_text
from .tiling import footprint_on, plan_and_mode


@dataclass(frozen=True)
class JobPlan:
    """What a prediction job will do, and how long it takes at a measured rate."""

    name: str
    output_shape: tuple[int, ...]
    input_tile: tuple[int, ...]
    output_tile: tuple[int, ...]
    mode: str
    blocks: BlockPlan
    input_bytes: int
    output_bytes: int  # level 0 and the pyramid
    rate: float | None  # output voxels/s of one worker
    rate_source: str
    workers: int
    placement: Placement | None = None  # of the input, from its metadata
    from_file: bool = False  # planned for an input file (not a shape): its placement is said


    @property
    def output_voxels(self) -> int:
        return math.prod(self.output_shape)

    @property
    def seconds(self) -> float | None:
        return None if not self.rate else self.output_voxels / (self.rate * self.workers)

    def report(self) -> str:
        tiles = math.prod(math.ceil(o / t) for o, t in zip(self.output_shape, self.output_tile, strict=True))
        lines = [
            f"network '{self.name}': output {shape_text(self.output_shape)} = {count_text(self.output_voxels)} voxels",
            f"tiles    {count_text(tiles)} of {shape_text(self.output_tile)} (input window "
            f"{shape_text(self.input_tile)}, {self.mode})",
            f"blocks   {count_text(len(self.blocks))} of {shape_text(self.blocks.block)} voxels (whole shards; each "
            f"reads its own halo: {self.blocks.read_amplification():.3f} input voxels read per output voxel)",
            f"read     {bytes_text(self.input_bytes)}",
            f"write    {bytes_text(self.output_bytes)} (with the pyramid)",
        ] + ([f"placed   {placement_text(self.placement)}"] if self.from_file else [])
        rate = f"{self.rate:,.0f} output voxels/s per worker ({self.rate_source})" if self.rate else ""
        return "\n".join(lines + time_lines(self.seconds, self.workers, rate, "a profile.csv (--profile) or time "
                                                                           "one tile now (--measure)"))


def planned_placement(input: str | None, dims: int) -> Placement | None:
    """The placement of a plan's input file, where it has one for ``dims`` spatial axes."""
    placement = input_placement(ArraySpec.parse(input)) if input is not None else None
    return placement if placement is not None and len(placement.voxel_size) == dims else None


def placement_text(placement: Placement | None) -> str:
    """Where the output will lie, as the input's metadata says (or that it says nothing)."""
    if placement is None:
        return "voxel size 1, at the origin (the input names no physical scale; predict's --voxel-size gives one)"
    unit = f" {placement.unit}" if placement.unit else ""
    where = ", ".join(f"{t:g}" for t in placement.translation)
    return (f"voxel size {' x '.join(f'{v:g}' for v in placement.voxel_size)}{unit}, the input's voxel 0 at "
            f"({where}), from the input's metadata; the output lies over it")


def time_lines(seconds: float | None, workers: int, rate: str, missing: str) -> list[str]:
    """A plan's last lines: the rate and the time on ``workers``, or what would give them."""
    if seconds is None:
        return [f"time     unknown: give {missing}"]
    return [f"rate     {rate}", f"time     {duration_text(seconds)} on {workers} worker(s) "
                                 f"({duration_text(seconds * workers)} of worker time)"]


def plan_job(config: Config | str | Path, *, input: str | None = None, shape: Sequence[int] | None = None,
             input_dtype: str = "uint8", workers: int = 1, tile: Sequence[int] | None = None,
             tiles_per_block: Sequence[int] | int = 1, mode: str | None = None, mirror: bool = False,
             stored_channels: int | None = None, stored_dtype: str = "float32", profile_csv: str | Path | None = None,
             measure: bool = False, memory_limit: int | None = None, device: str | None = None,
             precision: str = "float32") -> JobPlan:
    """Plan a prediction of ``input`` (or of a volume of ``shape``) without running it; the rate
    is that of ``precision`` (a profile's rows in it, or one tile timed in it)."""
    cfg = config if isinstance(config, Config) else load_config(config)
    if cfg.network.dims == 0:
        raise DensePredError("this network classifies feature vectors (dims = 0); there is nothing to plan")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DensePredError(f"workers = {workers!r} is invalid; expected a positive integer")
    geometry = network_geometry(cfg.network)
    spatial, itemsize, kept = _input_shape(cfg, geometry, input, shape, input_dtype)
    placement = planned_placement(input, geometry.ndim)
    mode = mode or cfg.prediction.mode
    device_ = resolve_device(device)
    checked = precision_for(precision, device_)
    classes = stored_channels or cfg.network.n_classes
    footprint = footprint_on(device_, cfg.network.in_channels, cfg.network.n_classes, itemsize, classes,
                             np.dtype(stored_dtype).itemsize, pyramid=True)  # planned as OME-Zarr with its pyramid
    tiles, engine_mode = plan_and_mode(geometry, spatial, tile or cfg.prediction.tile_shape, mode, mirror,
                                       memory_budget(memory_limit, device_).less(kept), footprint, device_)
    per_block = (tiles_per_block,) * geometry.ndim if isinstance(tiles_per_block, int) else tuple(tiles_per_block)
    if len(per_block) != geometry.ndim or any(n < 1 for n in per_block):
        raise DensePredError(f"tiles per block {list(per_block)} are invalid; expected {geometry.ndim} positive "
                             "integers")
    blocks = BlockPlan.create(tiles.output_shape, tiles.output_tile, per_block, geometry.fov)
    levels = pyramid(tiles.output_shape, placement.voxel_size if placement else None)
    output_bytes = sum(math.prod(level.shape) for level in levels) * classes * np.dtype(stored_dtype).itemsize
    rate, source = _rate(cfg, geometry, tiles.input_tile, engine_mode, profile_csv, measure, device_, checked)
    return JobPlan(cfg.name, tiles.output_shape, tiles.input_tile, tiles.output_tile, engine_mode, blocks,
                   blocks.input_voxels() * cfg.network.in_channels * itemsize, output_bytes, rate, source, workers,
                   placement, input is not None)


def _input_shape(cfg: Config, geometry: Geometry, input: str | None, shape: Sequence[int] | None,
                 input_dtype: str) -> tuple[tuple[int, ...], int, int]:
    """The input's spatial shape, its itemsize, and the bytes it keeps of what it decoded."""
    if (input is None) == (shape is None):
        raise DensePredError("give the input (--input SPEC) or its shape (--shape Z,Y,X), one of them")
    if input is not None:
        source = ChannelFirst(open_array(ArraySpec.parse(input)), cfg.network.in_channels, geometry.ndim)
        if source.stacked:
            raise DensePredError("plan a 2D net over a stack by its slices: --shape Y,X with --workers for the slices")
        return tuple(source.spatial_shape), source.dtype.itemsize, kept_bytes_of(source)
    spatial = tuple(int(n) for n in shape)
    if len(spatial) != geometry.ndim or any(n < 1 for n in spatial):
        raise DensePredError(f"shape {list(spatial)} is invalid; expected {geometry.ndim} positive integers")
    try:
        return spatial, np.dtype(input_dtype).itemsize, 0
    except TypeError:
        raise DensePredError(f"input dtype {input_dtype!r} is invalid; expected e.g. uint8, uint16, float32") from None


def _rate(cfg: Config, geometry: Geometry, input_tile: tuple[int, ...], mode: str, profile_csv: str | Path | None,
          measure: bool, device: torch.device, precision: Precision) -> tuple[float | None, str]:
    if profile_csv is not None:
        return rate_from_profile(profile_csv, input_tile, mode, precision.name)
    if not measure:
        return None, ""
    voxels = math.prod(geometry.dense_output_shape(input_tile))
    rate = voxels / tile_seconds(cfg, mode, input_tile, device, precision)
    if precision.name != "float32":  # as the profiler: measured against float32 on the same tile, and kept
        float32_rate = voxels / tile_seconds(cfg, mode, input_tile, device, FLOAT32)
        how = f"densepred plan --measure, {mode} {shape_text(input_tile)}"
        remember(cfg.network, device, precision.name, rate, float32_rate, how)
        if rate < float32_rate:
            raise DensePredError(slower_message(precision.name, device_name(device), rate, float32_rate, how))
    return rate, f"one {shape_text(input_tile)} tile timed now, {precision.name}"


def tile_seconds(cfg: Config, mode: str, input_tile: tuple[int, ...], device: torch.device,
                 precision: Precision) -> float:
    """Seconds of one tile of random data (after a warm-up), softmax and copy to the host included."""
    with rng_kept():  # random weights: the time is what counts
        net = build_net(cfg).eval()
    engine = DenseEngine(net, mode, device, precision)
    x = torch.rand((1, cfg.network.in_channels, *input_tile), generator=generator())
    torch.softmax(engine(x), dim=1)  # warm-up
    start = time.perf_counter()
    torch.softmax(engine(x), dim=1).cpu()
    return time.perf_counter() - start


def rate_from_profile(path: str | Path, input_tile: Sequence[int], mode: str,
                      precision: str = "float32") -> tuple[float, str]:
    """Output voxels/s for a tile from ``profile.csv`` rows of ``precision`` (a profile without
    that column is float32): its own row, else the fastest row (said so)."""
    table = read_profile(path, ("mode", "input_shape", "voxels_per_s", "status"),
                         "a network's profile.csv (densepred profile CONFIG --out DIR writes one; a model's "
                         "model_profile.csv has windows, not tiles)")
    rows = [r for r in table if r.get("status") == "ok" and (r.get("precision") or "float32") == precision]
    if not rows:
        raise DensePredError(f"{path} has no measured rows in {precision}; run densepred profile "
                             f"--precision {precision} first")
    tile = shape_text(input_tile).replace(" ", "")
    own = [r for r in rows if r["input_shape"] == tile and r["mode"] == mode]
    if own:
        return float(own[0]["voxels_per_s"]), f"{path}, this tile"
    best = max(rows, key=lambda r: float(r["voxels_per_s"]))
    return float(best["voxels_per_s"]), f"{path}, its fastest row ({best['mode']} {best['input_shape']}), not this tile"


def read_profile(path: str | Path, columns: Sequence[str], expected: str) -> list[dict[str, str]]:
    """The rows of the CSV at ``path``, refused in one line unless it has ``columns`` (it is
    then not the ``expected`` profile)."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
    except OSError as exc:
        raise DensePredError(f"cannot read the profile {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DensePredError(f"cannot read the profile {path}: not a CSV file ({exc})") from None
    if missing:
        raise DensePredError(f"{path} has no {', '.join(missing)} column(s), so it is not {expected}")
    return rows



def bytes_text(n: float) -> str:
    """``1.2 GB``: a byte count with an SI prefix."""
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"
