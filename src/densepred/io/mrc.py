"""MRC files: cryo-electron tomograms, maps and stacks (``.mrc``, ``.rec``, ``.map``, ``.st``,
``.ali``, ``.mrcs``), as IMOD, RELION, Warp and AreTomo write them (densepred writes them with
:mod:`.mrc_output`).

The data are memory-mapped by mrcfile (CCP-EM's reader), ``(Z, Y, X)`` (a 2D image ``(Y, X)``;
an image stack's sections along z; a volume stack, MRC2014's space group 401, a volume per
channel), in the mode the header names (int8, int16, uint16, float16, float32). The voxel size
is the header's cell over its sampling, in angstrom; the header's origin is left out, since
programs disagree on what it means (a subvolume's start or the negative of it), so an output is
placed from the volume's first voxel. A header that does not follow the MRC2014 standard (old
IMOD and SerialEM files) is read as it is, with one warning naming what is off.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from ..errors import DensePredError
from .axes import channel_first
from .ome_zarr import Placement, checked_placement

log = logging.getLogger("densepred")

SUFFIXES = (".mrc", ".rec", ".map", ".st", ".ali", ".mrcs")
PREDICTION_LABEL = "densepred prediction"  # a header label of densepred's MRC outputs (:mod:`.mrc_output`)
LABELS_LABEL = PREDICTION_LABEL + " (labels)"  # ... of its argmax labels


def _open(path: Path, warn: bool = True) -> Any:
    """The file memory-mapped; ``warn``: log a header off the standard (once a run: when its
    data are opened, not again for its placement)."""
    import mrcfile

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = mrcfile.mmap(path, mode="r", permissive=True)
        except (OSError, ValueError) as exc:
            raise DensePredError(f"cannot read {path}: {exc}; it is damaged, or not an MRC file") from None
    off = str(caught[0].message).rstrip(".") if caught else None
    if mrc.data is None:
        raise DensePredError(f"cannot read {path}: its header does not describe its data ({off or 'mode '}"
                             f"{'' if off else int(mrc.header.mode)}); it is damaged, or not an MRC file")
    if off and warn:
        log.warning("%s does not follow the MRC2014 standard (%s); read as its header says", path, off)
    return mrc


def open_mrc(path: Path, where: str, time: int | None) -> Any:
    """The file's data as a memory map, spatial axes named (``ZYX`` or ``YX``)."""
    mrc = _open(path)
    data = mrc.data
    if data.ndim == 4 and mrc.is_volume_stack():  # a volume per channel, as densepred writes classes
        return channel_first(data, "CZYX", where, time)
    if data.ndim not in (2, 3):
        raise DensePredError(f"{where} holds {data.ndim}D data of shape {list(data.shape)}; densepred reads 2D images, "
                             "3D volumes and stacks of volumes (one per channel)")
    return channel_first(data, "ZYX"[3 - data.ndim:], where, time)


def holds_labels(path: Path) -> bool:
    """Whether the file holds densepred's argmax labels (a header label says so)."""
    header = _open(path, warn=False).header
    return any(bytes(text).decode("ascii", "replace").strip() == LABELS_LABEL
               for text in header.label[:max(0, min(int(header.nlabl), 10))])


def mrc_placement(path: Path) -> Placement | None:
    """The voxel size the header gives (z, y, x; angstrom), or None where it gives none."""
    mrc = _open(path, warn=False)
    size = mrc.voxel_size  # x, y, z, float32
    sizes = [float(f"{float(v):.7g}") for v in (size.z, size.y, size.x)][3 - min(mrc.data.ndim, 3):]
    return checked_placement(sizes, [0.0] * len(sizes), "angstrom")


__all__ = ["LABELS_LABEL", "PREDICTION_LABEL", "SUFFIXES", "holds_labels", "mrc_placement", "open_mrc"]
