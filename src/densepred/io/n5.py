"""N5 inputs: the chunked format of the Java imaging tools (BigDataViewer and BigStitcher,
Paintera, N5 Spark, the Janelia FIB-SEM pipelines), read through tensorstore.

N5 keeps zarr's idea (a folder per group, a file per chunk) with other metadata: a dataset's
``attributes.json`` lists ``dimensions`` and ``blockSize`` fastest axis first (x, y, z), and
each block is stored in that (Fortran) order. tensorstore reads it in that order; densepred,
like z5py and zarr's old N5 store, reverses the axes so an N5 volume is ``(z, y, x)``, with a
channel axis (named ``c`` in a neuroglancer ``axes`` attribute, else the last in the file) in
front.

Where a dataset lies in physical space is written several ways, each read here:

* ``transform`` (the CellMap/OpenOrganelle pipelines): ``axes``, ``scale``, ``translate`` and
  ``units`` of that level, in ``ordering`` ``C`` (z, y, x) or ``F``;
* ``pixelResolution`` (n5-viewer, N5 Spark: ``{"dimensions": [...], "unit": "um"}``) or
  ``resolution`` (neuroglancer, BigDataViewer, Paintera, with ``units``), x first, found on the
  dataset or the group above it, times the level's ``downsamplingFactors``; Paintera's
  ``offset`` (x first, physical units) moves it.

A spec names a dataset, ``volume.n5:raw`` or ``volume.n5:raw/s0``; a multiscale group
(``s0``, ``s1``, ...) stands for its full-resolution ``s0``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DensePredError
from .ome_zarr import SPACE_UNITS, UNIT_ABBREVIATIONS, Placement
from .reading import plain_box

MAX_GROUPS_LISTED = 1000  # folders visited to list the datasets of a container
CODECS = "raw, gzip, bzip2, xz, blosc or zstd"  # the N5 compressions tensorstore reads (not lz4)


def attributes(folder: Path) -> dict[str, Any]:
    """A group's or dataset's attributes (an empty dict where it has none)."""
    try:
        data = json.loads((folder / "attributes.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise DensePredError(f"cannot read {folder / 'attributes.json'}: {exc}") from None
    return data if isinstance(data, dict) else {}


def is_dataset(folder: Path) -> bool:
    return "dimensions" in attributes(folder)


def dataset_folder(container: Path, key: str | None) -> Path:
    """The folder of the dataset a spec names (``key``, else the container): itself, its ``s0``
    where it is a multiscale group, or the one dataset of a group that holds one."""
    folder = container / key if key else container
    inside = next((p for p in folder.parents if p.is_relative_to(container) and is_dataset(p)), None)
    if inside is not None:
        raise DensePredError(f"{container}:{key} is a folder of chunks inside the N5 dataset "
                             f"{container}:{inside.relative_to(container).as_posix()}; name the dataset")
    if not folder.is_dir():
        raise DensePredError(f"'{key}' not found in {container}; available: {_listing(container)}")
    if is_dataset(folder):
        return folder
    if is_dataset(folder / "s0"):
        return folder / "s0"
    found = datasets(folder)
    if len(found) == 1:
        return folder / found[0]
    where = f"{container}:{key}" if key else str(container)
    raise DensePredError(f"{where} is an N5 group of {len(found)} datasets; name one as {container}:"
                         f"{key + '/' if key else ''}DATASET (available: {_listing(folder)})")


def datasets(folder: Path) -> list[str]:
    """The datasets below ``folder`` (not entering datasets, whose sub-folders are chunks)."""
    found, queue, visited = [], [folder], 0
    while queue and visited < MAX_GROUPS_LISTED:
        group = queue.pop(0)
        visited += 1
        for child in sorted(p for p in group.iterdir() if p.is_dir()):
            if is_dataset(child):
                found.append(child.relative_to(folder).as_posix())
            else:
                queue.append(child)
    return found


def _listing(folder: Path) -> str:
    names = datasets(folder) if folder.is_dir() else []
    return ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "") or "none"


class N5Array:
    """An N5 dataset as an array in C order (its stored axes reversed): ``shape``, ``dtype``,
    ``chunks`` and ``array[box]``, read by tensorstore (safe from several threads)."""

    def __init__(self, folder: Path):
        import tensorstore

        self.folder = folder
        self.store_path = str(folder)  # how a read error names the input (io.reading)
        try:
            store = tensorstore.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(folder)}},
                                     read=True, open=True).result()
        except ValueError as exc:  # an unknown compression or data type, a bad attributes.json
            raise DensePredError(f"cannot open the N5 dataset {folder}: {_reason(exc)} (densepred reads N5 "
                                 f"blocks stored {CODECS}: convert others, e.g. with N5's own tools)") from None
        self.store = store.T  # x fastest in the file: z, y, x here
        self.shape = tuple(int(n) for n in self.store.shape)
        self.dtype = np.dtype(self.store.dtype.numpy_dtype)
        self.ndim = len(self.shape)
        self.chunks = tuple(int(n) for n in reversed(attributes(folder)["blockSize"]))

    def __getitem__(self, key: Any) -> np.ndarray:
        box = plain_box(key if isinstance(key, tuple) else (key,), self.shape)
        view = self.store[box] if box is not None else self.store[key]
        return np.asarray(view.read().result())

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[tuple(slice(None) for _ in self.shape)]
        return data if dtype is None else data.astype(dtype)


def _reason(error: Exception) -> str:
    """tensorstore's message without the spec it appends."""
    return " ".join(re.sub(r"\s*\[tensorstore_spec=.*\]\s*$", "", str(error), flags=re.S).split())


def n5_axes(folder: Path) -> str | None:
    """The dataset's axes as letters (``C``, ``Z``, ``Y``, ``X``, ``T``) in densepred's order
    (the file's reversed), from a neuroglancer ``axes`` attribute; None where there is none."""
    from .axes import axis_letters

    names = attributes(folder).get("axes")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return axis_letters(list(reversed(names)))


def n5_placement(folder: Path, spatial: int) -> Placement | None:
    """Where the dataset's voxels lie (its last ``spatial`` axes in densepred's order), from
    the attributes of the dataset and of the group above it; None where neither says."""
    own, parent = attributes(folder), attributes(folder.parent)
    try:
        if isinstance(own.get("transform"), dict):
            return _cellmap_transform(own["transform"], spatial)
        size, unit = _resolution(own, spatial) or _resolution(parent, spatial) or (None, None)
        if size is None:
            return None
        factors = _reversed_numbers(own.get("downsamplingFactors"), spatial) or (1.0,) * spatial
        offset = _reversed_numbers(own.get("offset") or parent.get("offset"), spatial) or (0.0,) * spatial
    except (TypeError, ValueError, KeyError):
        return None
    voxel = tuple(s * f for s, f in zip(size, factors, strict=True))
    shift = tuple(o + (f - 1) / 2 * s for o, f, s in zip(offset, factors, size, strict=True))  # block centres
    return _checked(voxel, shift, unit)


def _resolution(attrs: dict[str, Any], spatial: int) -> tuple[tuple[float, ...], str | None] | None:
    pixel = attrs.get("pixelResolution")
    if isinstance(pixel, dict):
        return _reversed_numbers(pixel.get("dimensions"), spatial), _unit([pixel.get("unit")])
    values = pixel if isinstance(pixel, list) else attrs.get("resolution")
    size = _reversed_numbers(values, spatial)
    return None if size is None else (size, _unit(attrs.get("units")))


def _cellmap_transform(transform: dict[str, Any], spatial: int) -> Placement | None:
    order = 1 if transform.get("ordering", "C") == "C" else -1
    axes = [str(a).lower() for a in transform["axes"]][::order]
    keep = [i for i, a in enumerate(axes) if a in ("z", "y", "x")][-spatial:]
    scale = [float(v) for v in transform["scale"]][::order]
    translate = [float(v) for v in transform.get("translate", [0.0] * len(axes))][::order]
    units = transform.get("units")
    return _checked(tuple(scale[i] for i in keep), tuple(translate[i] for i in keep),
                    _unit([units[::order][i] for i in keep]) if isinstance(units, list) else None)


def _reversed_numbers(values: Any, count: int) -> tuple[float, ...] | None:
    """The last ``count`` of a list written x first, in z, y, x order."""
    if not isinstance(values, list) or len(values) < count:
        return None
    return tuple(float(v) for v in reversed(values[:count]))


def _unit(names: Any) -> str | None:
    """One UDUNITS name for the spatial axes, or None where they have none, differ or are unknown."""
    if not isinstance(names, list) or len(set(map(str, names))) != 1:
        return None
    name = str(names[0])
    name = UNIT_ABBREVIATIONS.get(name, UNIT_ABBREVIATIONS.get(name.lower(), name))
    return name if name in SPACE_UNITS else None


def _checked(voxel: tuple[float, ...], shift: tuple[float, ...], unit: str | None) -> Placement | None:
    if not all(math.isfinite(v) and v > 0 for v in voxel) or not all(map(math.isfinite, shift)):
        return None
    return Placement(voxel, shift, unit)
