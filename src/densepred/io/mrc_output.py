"""MRC outputs as cryo-ET software opens them (IMOD, ChimeraX, napari, mrcfile): MRC2014 files
written tile by tile through a memory map.

* One class (``--classes K``) or ``--argmax`` labels: one volume, ``(Z, Y, X)`` (one image
  for a 2D image).
* Several classes: a volume stack (MRC2014 space group 401), one volume per class, which
  mrcfile and densepred read back as ``(C, Z, Y, X)``; a 2D image's classes are an image
  stack.
* Modes: float32 (mode 2) and float16 (mode 12) probabilities; labels as bytes (mode 0).
  MRC2014's mode 0 is signed, so labels go up to 127 and uint8 probabilities (up to 255) are
  refused with the modes that keep them.
* The voxel size is the input's, in angstrom, where the input (or ``--voxel-size`` with
  ``--unit``) gives one with a unit. The header's origin is left at 0, as densepred reads MRC
  files: programs disagree on its sign.
* The header's statistics are left as MRC2014's "not determined" (``dmax < dmin``): viewers
  measure the data themselves.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DensePredError
from .mrc import LABELS_LABEL, PREDICTION_LABEL
from .ome_zarr import Placement

MODES = {"float32": 2, "float16": 12, "uint8": 0}  # stored dtype -> MRC2014 mode (uint8: labels only)
LABEL_LIMIT = 127  # mode 0 is signed bytes
ANGSTROM_PER = {"angstrom": 1.0, "picometer": 0.01, "nanometer": 10.0, "micrometer": 1e4, "millimeter": 1e7,
                "centimeter": 1e8, "meter": 1e10}


def check_mrc_values(stored_dtype: Any, labels: bool, n_labels: int) -> None:
    """Raise, before anything is written, where an MRC file cannot keep these values as they are."""
    name = np.dtype(stored_dtype).name
    if labels and n_labels - 1 > LABEL_LIMIT:
        raise DensePredError(f"an MRC file keeps labels as signed bytes (mode 0, up to {LABEL_LIMIT}); this net's "
                             f"{n_labels} classes need more: write --argmax labels to OME-Zarr (out.zarr), HDF5 or "
                             "TIFF")
    if not labels and name == "uint8":
        raise DensePredError("--dtype uint8 cannot be written to MRC: its byte mode (0) is signed, so 255 would "
                             "read as -1; use --dtype float16 (mode 12, 2 bytes a voxel) or float32 (mode 2), "
                             "--argmax labels (mode 0), or write uint8 to OME-Zarr, HDF5 or TIFF")
    if name not in MODES:
        raise DensePredError(f"dtype {name} cannot be written to MRC; valid: float32, float16, --argmax labels")


def create_mrc(path: Path, shape: tuple[int, ...], dtype: np.dtype, channel_axis: bool,
               placement: Placement | None) -> Any:
    """A new MRC file for an output of ``shape`` (classes first where ``channel_axis``),
    memory-mapped, as the writers see it."""
    import mrcfile

    stored = shape[1:] if channel_axis and shape[0] == 1 else shape
    spatial = len(shape) - channel_axis
    with mrcfile.new_mmap(path, shape=stored, mrc_mode=MODES[np.dtype(dtype).name], overwrite=False) as mrc:
        if len(stored) == 3 and (channel_axis and spatial == 2):
            mrc.set_image_stack()  # the classes of a 2D image
        size = voxel_size(placement, spatial)
        if size is not None:
            mrc.voxel_size = size
        mrc.header.label[:] = b""  # mrcfile's own label has the time: the same run, the same bytes
        mrc.header.nlabl = 0
        mrc.add_label(PREDICTION_LABEL if channel_axis else LABELS_LABEL)  # napari's reader opens labels as such
    return open_mrc_output(path, shape)


def open_mrc_output(path: Path, shape: tuple[int, ...] | None = None) -> Any:
    """An MRC output memory-mapped for writing (bytes as uint8: densepred writes them only for
    labels up to 127), in ``shape`` where it holds as many voxels (one class: its channel axis)."""
    import mrcfile
    from mrcfile.utils import data_dtype_from_header, data_shape_from_header

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # densepred writes the standard: a header off it is damaged, not read
        with mrcfile.open(path, header_only=True) as mrc:
            header = mrc.header
            dtype, stored = data_dtype_from_header(header), data_shape_from_header(header)
            offset = header.nbytes + int(header.nsymbt)
    if dtype == np.int8:
        dtype = np.dtype(np.uint8)
    array = np.memmap(path, dtype=dtype, mode="r+", offset=offset, shape=stored)
    if shape is not None and tuple(shape) != stored and int(np.prod(shape)) == array.size:
        return array.reshape(shape)
    return array


def voxel_size(placement: Placement | None, spatial: int) -> tuple[float, float, float] | None:
    """The header's voxel size (x, y, z; angstrom) of ``placement``; None without one in a known unit.
    A 2D image's z takes its x."""
    if placement is None or placement.unit not in ANGSTROM_PER or len(placement.voxel_size) != spatial:
        return None
    sizes = [v * ANGSTROM_PER[placement.unit] for v in reversed(placement.voxel_size)]  # x first
    return (sizes[0], sizes[1], sizes[2] if spatial == 3 else sizes[0])


__all__ = ["check_mrc_values", "create_mrc", "open_mrc_output", "voxel_size"]
