"""Viewer-ready OME-Zarr 0.5 images: sharded zarr v3 levels, physical metadata, labels, channels.

Why each choice (facts gathered in the project's design notes):

* **Shards** are the unit one writer owns: an output tile (level 0) or one pyramid block. zarr
  writes a partial shard by read-modify-write, which loses updates when two writers share a
  shard; here no two writers ever do. Inner chunks of about 64 voxels a side let viewers
  fetch small pieces.
* **A pyramid** down to about 256 voxels a side: napari's 3D view renders the coarsest level.
* **Units** are UDUNITS names (``nanometer``; neuroglancer rejects ``nm``). Without a voxel
  size the scale is 1 and no unit is claimed.
* **Labels** (``--argmax``) carry ``image-label`` (napari-ome-zarr opens a labels layer);
  probabilities name their channels in ``omero``.
* **Dtypes** neuroglancer reads from zarr: uint8, uint16, uint32, float32 (no float16).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DensePredError, did_you_mean
from ..geometry import Level, inner_chunks, level_shard, level_transform

ZSTD_LEVEL = 1  # of the inner chunks' zstd (zarr's default 0 is zstd's 3)

ZARR_DTYPES = ("uint8", "uint16", "uint32", "float32")
SPACE_UNITS = (
    "angstrom", "attometer", "centimeter", "decimeter", "exameter", "femtometer", "foot", "gigameter",
    "hectometer", "inch", "kilometer", "megameter", "meter", "micrometer", "mile", "millimeter", "nanometer",
    "parsec", "petameter", "picometer", "terameter", "yard", "yoctometer", "yottameter", "zeptometer", "zettameter",
)
UNIT_ABBREVIATIONS = {"nm": "nanometer", "um": "micrometer", "µm": "micrometer", "mm": "millimeter",  # noqa: RUF001 - users type the micro sign
                      "cm": "centimeter", "m": "meter", "a": "angstrom", "pm": "picometer"}


@dataclass(frozen=True)
class OmeLayout:
    """Everything about an OME-Zarr output except its data."""

    axes: tuple[str, ...]  # "c" first for probabilities, then the spatial axes
    levels: tuple[Level, ...]
    tile: tuple[int, ...]  # the level-0 output tile: the shard of every level (clipped)
    chunk_target: tuple[int, ...]
    voxel_size: tuple[float, ...]
    translation: tuple[float, ...]  # of level 0, in physical units
    unit: str | None = None
    channel_names: tuple[str, ...] = ()
    label: bool = False
    name: str = ""
    value_range: tuple[float, float] = (0.0, 1.0)  # of stored probabilities: (0, 255) for uint8
    extra_attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int | None:
        return len(self.channel_names) if not self.label else None

    def shape(self, level: Level) -> tuple[int, ...]:
        return level.shape if self.label else (len(self.channel_names), *level.shape)

    def shard(self, level: Level) -> tuple[int, ...]:
        spatial = level_shard(self.tile, level.shape)
        return spatial if self.label else (len(self.channel_names), *spatial)

    def chunks(self, level: Level) -> tuple[int, ...]:
        spatial = inner_chunks(level_shard(self.tile, level.shape), self.chunk_target)
        return spatial if self.label else (1, *spatial)


def check_unit(unit: str | None) -> str | None:
    """A UDUNITS space unit as OME-Zarr wants it, or a clear error (``nm`` -> ``nanometer`` hint)."""
    if unit is None or unit in SPACE_UNITS:
        return unit
    if not isinstance(unit, str):
        raise DensePredError(f"unit {unit!r} is invalid; expected the name of a space unit, such as nanometer")
    hint = UNIT_ABBREVIATIONS.get(unit.lower())
    suggestion = f" (did you mean '{hint}'?)" if hint else did_you_mean(unit, SPACE_UNITS)
    raise DensePredError(f"unit {unit!r} is not an OME-Zarr space unit{suggestion}; use a UDUNITS name such as "
                         "nanometer or micrometer")


def check_zarr_dtype(dtype: Any) -> None:
    name = np.dtype(dtype).name
    if name not in ZARR_DTYPES:
        raise DensePredError(f"dtype {name} cannot be written to zarr for viewers (neuroglancer reads "
                             f"{', '.join(ZARR_DTYPES)}); use --dtype float32 or uint8, or write HDF5 "
                             "(out.h5:dataset), which keeps float16")


def ome_attributes(layout: OmeLayout) -> dict[str, Any]:
    """The ``ome`` attributes of an OME-Zarr 0.5 image (or label image) with these levels."""
    kinds = {"c": "channel", "z": "space", "y": "space", "x": "space"}
    axes = [{"name": a, "type": kinds[a], **({"unit": layout.unit} if kinds[a] == "space" and layout.unit else {})}
            for a in layout.axes]
    datasets = []
    for level in layout.levels:
        scale, translation = level_transform(level, layout.voxel_size, layout.translation)
        if not layout.label:
            scale, translation = [1.0, *scale], [0.0, *translation]
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
        if any(translation):
            transforms.append({"type": "translation", "translation": translation})
        datasets.append({"path": str(level.index), "coordinateTransformations": transforms})
    ome: dict[str, Any] = {"version": "0.5", "multiscales": [{"name": layout.name, "axes": axes,
                                                              "datasets": datasets}]}
    if layout.label:
        ome["image-label"] = {"version": "0.5"}
    else:
        ome["omero"] = {"channels": [_channel(name, layout.value_range) for name in layout.channel_names]}
    return ome


def _channel(name: str, value_range: tuple[float, float]) -> dict[str, Any]:
    low, high = (float(v) for v in value_range)
    return {"label": name, "active": True, "color": "FFFFFF",
            "window": {"start": low, "end": high, "min": low, "max": high}}


def create_levels(group: Any, layout: OmeLayout, dtype: np.dtype) -> list[Any]:
    """Create the (empty) sharded arrays of every level in ``group``; returns them, level 0 first.

    Inner chunks are compressed with zstd at level 1, not zarr's default (0, which zstd reads
    as 3): on the demo net's probability maps level 1 encoded 1.3x faster, its uint8 maps 2%
    smaller (benchmarks/output_codec.py); compression is the largest cost of writing."""
    from zarr.codecs import ZstdCodec

    arrays = []
    for level in layout.levels:
        arrays.append(group.create_array(
            str(level.index), shape=layout.shape(level), shards=layout.shard(level), chunks=layout.chunks(level),
            dtype=dtype, fill_value=0, dimension_names=list(layout.axes), compressors=ZstdCodec(level=ZSTD_LEVEL)))
    return arrays


@dataclass(frozen=True)
class Placement:
    """Where an image's voxels lie in physical space, for its spatial axes: voxel ``i`` is
    centred at ``translation + i * voxel_size`` (OME-Zarr's scale then translation)."""

    voxel_size: tuple[float, ...]
    translation: tuple[float, ...]
    unit: str | None = None


def space_unit(names: Any) -> str | None:
    """One UDUNITS name for the spatial axes (``nm`` read as ``nanometer``), or None where they
    have none, differ or are unknown."""
    if not isinstance(names, list) or len(set(map(str, names))) != 1:
        return None
    name = str(names[0])
    name = UNIT_ABBREVIATIONS.get(name, UNIT_ABBREVIATIONS.get(name.lower(), name))
    return name if name in SPACE_UNITS else None


def checked_placement(voxel: Sequence[float], shift: Sequence[float], unit: str | None) -> Placement | None:
    """A placement of positive, finite voxel sizes and a finite position (one of each per axis,
    at least one axis), else None."""
    voxel, shift = tuple(float(v) for v in voxel), tuple(float(v) for v in shift)
    if not voxel or len(voxel) != len(shift) or not all(math.isfinite(v) and v > 0 for v in voxel) or \
            not all(map(math.isfinite, shift)):
        return None
    return Placement(voxel, shift, unit)


def in_zyx_order(placement: Placement | None, letters: str | None) -> Placement | None:
    """``placement``, whose spatial axes are named by ``letters`` in its order (``XYZ`` for
    webknossos' arrays, say), in the z, y, x order densepred reads the array in
    (:func:`~.axes.channel_first` puts its axes so); unchanged where the letters do not name
    each of its axes once as z, y or x.

        >>> in_zyx_order(Placement((4.0, 5.0, 40.0), (1.0, 2.0, 3.0)), "XYZ").voxel_size
        (40.0, 5.0, 4.0)
    """
    if placement is None or not letters or len(letters) != len(placement.voxel_size) or \
            len(set(letters)) != len(letters) or not set(letters) <= set("ZYX"):
        return placement
    order = sorted(range(len(letters)), key=lambda i: "ZYX".index(letters[i]))
    return Placement(tuple(placement.voxel_size[i] for i in order), tuple(placement.translation[i] for i in order),
                     placement.unit)


def spatial_letters(letters: str | None) -> str | None:
    """The spatial ones (z, y, x) of axis letters, in their order; None for None."""
    return None if letters is None else "".join(a for a in letters if a in "ZYX")


def attribute_placement(attributes: Any) -> Placement | None:
    """The placement an array's own attributes give, as funlib, gunpowder and daisy write them
    and the CREMI files hold: ``voxel_size`` (or ``resolution``) and ``offset``, spatial axes
    only, z first, ``offset`` the position of voxel 0 in the same units; ``units`` names them.
    Else Fiji's HDF5 plugin's (and PlantSeg's) ``element_size_um``, in micrometres."""
    try:
        size = attributes.get("voxel_size", attributes.get("resolution"))
        if size is None and attributes.get("element_size_um") is not None:
            size = [float(v) for v in attributes.get("element_size_um")]
            return checked_placement(size, [0.0] * len(size), "micrometer")
        if size is None:
            return None
        size = [float(v) for v in size]
        offset = attributes.get("offset")
        offset = [0.0] * len(size) if offset is None else [float(v) for v in offset]
        units = attributes.get("units")
        units = [units] * len(size) if isinstance(units, str) else units
        return checked_placement(size, offset, space_unit(list(units) if units is not None else None))
    except (TypeError, ValueError, AttributeError):
        return None


def ome_placement(group_attributes: dict[str, Any], dataset_path: str) -> Placement | None:
    """The placement of one dataset of an OME-Zarr image (its spatial axes), from the image's
    attributes; None where they do not say (or say sizes that are not positive and finite)."""
    multiscales = group_attributes.get("ome", {}).get("multiscales") or group_attributes.get("multiscales")
    try:
        multiscale = multiscales[0]
        axes = multiscale["axes"]
        scale, shift = ome_transform(multiscale, dataset_path)
        spatial = [i for i, a in enumerate(axes) if a.get("type") == "space"]
        units = {axes[i].get("unit") for i in spatial}
        letters = "".join(str(axes[i].get("name", "")).upper() for i in spatial)
    except (TypeError, KeyError, IndexError, StopIteration, AttributeError, ValueError):
        return None
    return in_zyx_order(checked_placement([scale[i] for i in spatial], [shift[i] for i in spatial],
                                          units.pop() if len(units) == 1 else None), letters)


def ome_transform(multiscale: dict[str, Any], dataset_path: str) -> tuple[list[float], list[float]]:
    """The scale and translation of every axis of one dataset of a multiscale: the dataset's
    transforms, then those the multiscale applies to all its datasets. Raises StopIteration
    for a path that is not a dataset, ValueError where a transform misses axes."""
    ndim = len(multiscale["axes"]) if multiscale.get("axes") else 5  # 0.1-0.3: t, c, z, y, x
    dataset = next(d for d in multiscale["datasets"] if d["path"] == dataset_path)
    scale, shift = _scale_and_translation(dataset.get("coordinateTransformations") or [], ndim)
    outer_scale, outer_shift = _scale_and_translation(multiscale.get("coordinateTransformations") or [], ndim)
    return ([s * o for s, o in zip(scale, outer_scale, strict=True)],
            [t * o + u for t, o, u in zip(shift, outer_scale, outer_shift, strict=True)])


def _scale_and_translation(transforms: Sequence[dict[str, Any]], ndim: int) -> tuple[list[float], list[float]]:
    """One scale and one translation per axis from a list of OME-Zarr transforms (the scale
    first, as the specification orders them)."""
    scale, shift = [1.0] * ndim, [0.0] * ndim
    for transform in transforms:
        if transform.get("type") == "scale":
            scale = [float(v) for v in transform["scale"]]
        elif transform.get("type") == "translation":
            shift = [float(v) for v in transform["translation"]]
    if len(scale) != ndim or len(shift) != ndim:
        raise ValueError("a transform does not have one value per axis")
    return scale, shift


def channel_names(names: Sequence[str] | None, classes: Sequence[int]) -> tuple[str, ...]:
    """Names of the stored channels: the config's class names, else ``class 0``, ``class 1``..."""
    return tuple(names[c] if names else f"class {c}" for c in classes)
