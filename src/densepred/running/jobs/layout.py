"""The layout of an OME-Zarr output of a prediction job: levels, shards, chunks, physical metadata."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ...config import Config
from ...errors import DensePredError
from ...geometry import INNER_CHUNK, TilePlan, pyramid, stream_shards
from ...geometry.pyramid import inner_chunks
from ...geometry.scale import origin
from ...io import ArraySpec
from ...io.arrays import FORMAT_NAMES, input_placement
from ...io.encoding import Encoding
from ...io.mrc_output import check_mrc_values
from ...io.ome_zarr import OmeLayout, Placement, channel_names, check_unit, check_zarr_dtype
from .job import PredictJob


def ome_layout(job: PredictJob, cfg: Config, in_spec: ArraySpec, plan: TilePlan, encoding: Encoding,
               offset: Sequence[int], engine_mode: str) -> OmeLayout:
    """Levels, shards, chunks and physical metadata of an OME-Zarr output; shards are the
    tiles, cut for a stream (:func:`~densepred.geometry.stream_shards`)."""
    start = output_start(job, plan, offset)
    return layout_for(job, in_spec, plan.output_shape, written_tile(plan, engine_mode), start, encoding,
                      cfg.network.class_names or None, cfg.name)


def written_tile(plan: TilePlan, engine_mode: str) -> tuple[int, ...]:
    """The box an own net's output is stored in whole (a zarr shard; HDF5 chunks lie inside it):
    the output tile, cut for a stream (:func:`~densepred.geometry.stream_shards`)."""
    tile = tuple(plan.output_tile)
    return stream_shards(tile) if engine_mode == "stream" else tile


def layout_for(job: PredictJob, in_spec: ArraySpec, output_shape: Sequence[int], tile: Sequence[int],
               start: Sequence[int], encoding: Encoding, class_names: Sequence[str] | None, name: str,
               scale: Sequence[tuple[int, int]] = ()) -> OmeLayout:
    """The OME-Zarr layout of an output of ``output_shape`` written in ``tile`` boxes, whose voxel 0
    is centred on image voxel ``start`` (at the image's scale), or, for an output at another
    ``scale`` (output voxels per image voxel, ``(up, down)`` per axis), on the image position
    of output voxel ``start``'s centre."""
    check_zarr_dtype(encoding.stored_dtype)
    dims = len(output_shape)
    placed = output_placement(job, in_spec, dims, start, scale, in_voxels=True)
    assert placed is not None
    voxel_size, translation, unit = placed.voxel_size, placed.translation, placed.unit
    chunk_target = _chunk_target(job, dims)
    classes = range(encoding.n_classes) if encoding.classes is None else encoding.classes
    spatial_axes = tuple("zyx"[3 - dims:])
    return OmeLayout(
        axes=spatial_axes if encoding.argmax else ("c", *spatial_axes),
        levels=tuple(pyramid(tuple(output_shape), voxel_size, _levels(job.levels))), tile=tuple(tile),
        chunk_target=chunk_target, voxel_size=voxel_size, translation=translation, unit=unit,
        channel_names=() if encoding.argmax else channel_names(class_names, list(classes)),
        label=encoding.argmax, name=name, value_range=(0.0, 255.0 if encoding.dtype == "uint8" else 1.0))


def check_output_options(job: PredictJob, out_spec: ArraySpec, encoding: Encoding) -> None:
    """Refuse, before anything is written, what the output's format cannot take: stored values
    it cannot keep as they are (an MRC file's signed bytes; zarr's dtypes are checked by
    :func:`layout_for`), a pyramid (``--levels``) in any but OME-Zarr, chunks (``--chunks``) in
    a memory-mapped file. Never ignored without a word."""
    if out_spec.kind == "mrc":
        check_mrc_values(encoding.stored_dtype, encoding.argmax, encoding.n_classes)
    name = FORMAT_NAMES.get(out_spec.kind, out_spec.kind)
    if job.levels not in (None, 1) and out_spec.kind != "zarr":
        raise DensePredError(f"--levels {job.levels}: only OME-Zarr outputs hold a pyramid, and {out_spec} is "
                             f"{name}; write out.zarr for one, or leave --levels out")
    if job.chunks is not None and out_spec.kind not in ("zarr", "hdf5"):
        raise DensePredError(f"--chunks sets the chunks of OME-Zarr and HDF5 outputs; {out_spec} is a {name} file, "
                             "written through a memory map, which has none: leave --chunks out")


def file_chunks(job: PredictJob, tile: Sequence[int], encoding: Encoding) -> tuple[int, ...]:
    """The chunks of an HDF5 output written in ``tile`` boxes: blocks of about ``--chunks`` (64)
    voxels a side that divide the tile, as an OME-Zarr shard's inner chunks, every class in each;
    a tile is whole chunks, which the writers compress (``io/hdf5_chunks.py``)."""
    spatial = inner_chunks(tuple(tile), _chunk_target(job, len(tile)))
    return spatial if encoding.argmax else (encoding.channels, *spatial)


def _chunk_target(job: PredictJob, dims: int) -> tuple[int, ...]:
    return _per_axis_ints(job.chunks if job.chunks is not None else INNER_CHUNK, dims, "--chunks")


def output_start(job: PredictJob, plan: TilePlan, offset: Sequence[int]) -> tuple[int, ...]:
    """The image voxel an own net's output voxel 0 is centred on: the ROI start, plus the
    border without mirroring."""
    return tuple(o + (0 if job.mirror else b) for o, b in zip(plan.origin, offset, strict=True))


def output_placement(job: PredictJob, in_spec: ArraySpec, dims: int, start: Sequence[int],
                     scale: Sequence[tuple[int, int]] = (), in_voxels: bool = False) -> Placement | None:
    """Where an output's voxels lie (see :func:`layout_for` for ``start`` and ``scale``). Where
    neither the input nor the job names a voxel size: in the input's voxels (size 1, voxel 0
    at the origin) with ``in_voxels``, else None."""
    placed = _placement(job, in_spec, dims)
    if placed is None and not in_voxels:
        return None
    placed = placed or Placement((1.0,) * dims, (0.0,) * dims)
    pairs = tuple(scale) or ((1, 1),) * dims
    translation = tuple(t + origin(s, p) * v for t, s, p, v in zip(placed.translation, start, pairs,
                                                                   placed.voxel_size, strict=True))
    voxel_size = tuple(v * down / up for v, (up, down) in zip(placed.voxel_size, pairs, strict=True))
    if not all(math.isfinite(v) and v > 0 for v in voxel_size) or not all(map(math.isfinite, translation)):
        raise DensePredError(f"voxel size {list(voxel_size)} is invalid for the output's metadata: the scale and "
                             f"the translation {list(translation)} must be finite (JSON has no Infinity or NaN); "
                             "give --voxel-size")
    return Placement(voxel_size, translation, placed.unit)


def _numbers(values: Any) -> tuple[float, ...]:
    """A number or numbers as floats; () for anything else (text, a dict), which the caller refuses."""
    try:
        return tuple(float(v) for v in ((values,) if isinstance(values, int | float) else values))
    except (TypeError, ValueError):
        return ()


def file_placement(job: PredictJob, in_spec: ArraySpec, out_spec: ArraySpec, dims: int, start: Sequence[int],
                   scale: Sequence[tuple[int, int]] = ()) -> Placement | None:
    """:func:`output_placement` for an output that holds it in its own attributes (HDF5, TIFF, MRC);
    None for the others (an OME-Zarr output's layout places it, NumPy has no room)."""
    return output_placement(job, in_spec, dims, start, scale) if out_spec.kind in ("hdf5", "tiff", "mrc") else None


def _placement(job: PredictJob, in_spec: ArraySpec, dims: int) -> Placement | None:
    """The input's voxel size, the position of its voxel 0 and the unit: the job's voxel size
    where it gives one (the input's position kept in voxels), else the input's own, else None."""
    unit = check_unit(job.unit)
    found = input_placement(in_spec)
    if found is not None and len(found.voxel_size) != dims:
        found = None
    if job.voxel_size is not None:
        size = _numbers(job.voxel_size)
        size = size * dims if len(size) == 1 else size
        if len(size) != dims or not all(0 < v < math.inf for v in size):
            raise DensePredError(f"voxel size {job.voxel_size!r} is invalid; expected {dims} positive, finite "
                                 f"numbers ({', '.join('zyx'[3 - dims:]) if dims <= 3 else 'one per axis'})")
        voxels = (t / v for t, v in zip(found.translation, found.voxel_size, strict=True)) if found else (0,) * dims
        return Placement(size, tuple(i * v for i, v in zip(voxels, size, strict=True)), unit)
    if found is not None:
        return Placement(found.voxel_size, found.translation, unit or found.unit)
    if unit is not None:
        raise DensePredError(f"--unit {unit} needs --voxel-size (the input has no physical scale)")
    return None


def _levels(levels: int | None) -> int | None:
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int) or levels < 1):
        raise DensePredError(f"levels = {levels!r} is invalid; expected a positive integer (1 = no pyramid)")
    return levels


def _per_axis_ints(value: Sequence[int] | int, dims: int, name: str) -> tuple[int, ...]:
    values = (value,) * dims if isinstance(value, int) else tuple(value) if isinstance(value, Sequence) else ()
    values = values * dims if len(values) == 1 else values
    if len(values) != dims or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        axes = ", ".join("zyx"[3 - dims:]) if dims <= 3 else "one per axis"
        raise DensePredError(f"{name} {value!r} is invalid; expected a positive integer, or {dims} ({axes})")
    return values
