"""TIFF outputs as Fiji opens them: ImageJ hyperstacks, calibrated where the input is placed.

A TIFF output is memory-mapped and written tile by tile. Written as ImageJ hyperstacks, Fiji
shows the classes as channels beside the z slider (not a stack of classes times sections),
with the voxel size, unit and origin of the input (``Image > Properties``). ImageJ stores z
before channels (``ZCYX``), so
the file's array is handed to the writers as a ``(C, Z, Y, X)`` view of it.

ImageJ has no BigTIFF: an output over 4 GB is an OME-TIFF (``CZYX``), which Fiji opens through
Bio-Formats with the input's voxel size and unit (``PhysicalSizeX/Y/Z``; OME-XML keeps no
origin here). ImageJ has no float16 either, and both formats leave out any axis of one
element (a single class, a single section): such outputs keep tifffile's own description of
their axes (``CZYX``), uncalibrated, which densepred reads back as written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .ome_zarr import Placement

TIFF_LIMIT = 2**32 - 2**25  # classic TIFF offsets are 32 bit; beyond that BigTIFF
IMAGEJ_DTYPES = ("uint8", "uint16", "float32")
IMAGEJ_UNITS = {"micrometer": "micron", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm", "meter": "m"}
OME_UNITS = {"micrometer": "\u00b5m", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm", "meter": "m",
             "angstrom": "\u00c5", "picometer": "pm"}  # OME-XML's UnitsLength symbols


def create_tiff(path: Path, shape: tuple[int, ...], dtype: np.dtype, channel_axis: bool,
                placement: Placement | None) -> Any:
    """A new TIFF of ``shape`` (classes first where ``channel_axis``), memory-mapped, as the
    writers see it."""
    import tifffile

    axes = ("C" if channel_axis else "") + "ZYX"[3 - len(shape) + channel_axis:]
    bigtiff = int(np.prod(shape)) * dtype.itemsize > TIFF_LIMIT
    if bigtiff or dtype.name not in IMAGEJ_DTYPES or min(shape) == 1:
        ome = bigtiff and dtype.name != "float16" and min(shape) > 1
        calibration = ome_calibration(placement, axes.replace("C", "")) if ome else {}
        # grey pages, never RGB (tifffile takes 3 or 4 classes, or an x extent of 3 or 4, for colour samples)
        return tifffile.memmap(path, shape=shape, dtype=dtype, bigtiff=bigtiff, ome=ome, photometric="minisblack",
                               metadata={"axes": axes, **calibration})
    stored = axes.replace("CZ", "ZC")
    resolution, calibration = imagej_calibration(placement, axes.replace("C", ""))
    array = tifffile.memmap(path, shape=tuple(shape[axes.index(a)] for a in stored), dtype=dtype, imagej=True,
                            photometric="minisblack", resolution=resolution, metadata={"axes": stored, **calibration})
    return as_written(array, stored)


def open_tiff(path: Path) -> Any:
    """An existing TIFF output, memory-mapped for writing, as the writers see it."""
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        axes = tiff.series[0].axes if tiff.is_imagej and tiff.series else ""
    return as_written(tifffile.memmap(path, mode="r+"), axes)


def as_written(array: Any, stored_axes: str) -> Any:
    """The file's array in densepred's order: classes first."""
    return array.transpose(1, 0, 2, 3) if stored_axes == "ZCYX" else array


def imagej_calibration(placement: Placement | None, spatial: str) -> tuple[Any, dict[str, Any]]:
    """The resolution tags (pixels per unit, x then y) and the ImageJ description entries
    (``unit``, ``spacing``, origins in pixels) that place ``spatial`` (``ZYX`` or ``YX``) as
    ``placement`` does; none without a placement or a unit (ImageJ's uncalibrated)."""
    if placement is None or placement.unit is None or len(placement.voxel_size) != len(spatial):
        return None, {}
    size = dict(zip(spatial, placement.voxel_size, strict=True))
    shift = dict(zip(spatial, placement.translation, strict=True))
    calibration: dict[str, Any] = {"unit": IMAGEJ_UNITS.get(placement.unit, placement.unit)}
    if "Z" in size:
        calibration["spacing"] = size["Z"]
    calibration.update({f"{a.lower()}origin": -shift[a] / size[a] for a in spatial if shift[a]})
    return (1 / size["X"], 1 / size["Y"]), calibration


def ome_calibration(placement: Placement | None, spatial: str) -> dict[str, Any]:
    """OME-XML's ``PhysicalSize`` of ``spatial`` (``ZYX`` or ``YX``) and their unit, as
    ``placement`` gives them; none without a placement or with a unit OME does not name."""
    if placement is None or placement.unit not in OME_UNITS or len(placement.voxel_size) != len(spatial):
        return {}
    sizes = dict(zip(spatial, placement.voxel_size, strict=True))
    return {key: value for a in spatial
            for key, value in ((f"PhysicalSize{a}", sizes[a]), (f"PhysicalSize{a}Unit", OME_UNITS[placement.unit]))}
