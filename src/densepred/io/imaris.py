"""Imaris files (``.ims``): the HDF5 layout that Imaris, Andor's Fusion and Dragonfly and other
light-sheet and confocal software write; read only.

The full resolution of each channel is ``DataSet/ResolutionLevel 0/TimePoint t/Channel c/Data``
(z, y, x), stored padded to whole chunks: the image's own size is in the attributes ``X``, ``Y``,
``Z`` of ``DataSetInfo/Image``, and only that is read. Channels are the input's channels and time
points its time axis (``cells.ims@t=3``). Imaris writes attribute values as arrays of single
characters (``[b'5', b'1', b'2']``); the extent ``ExtMin0..2`` to ``ExtMax0..2`` (x, y, z, the
outer edges of the first and last voxels) and ``Unit`` give the placement.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DensePredError
from .axes import channel_first
from .hdf5 import check_hdf5_filters
from .ome_zarr import Placement, checked_placement, space_unit
from .reading import BoxArray

LEVEL = "DataSet/ResolutionLevel 0"


def text(value: Any) -> str:
    """An Imaris attribute as text (an array of single bytes, or bytes, or text)."""
    if isinstance(value, np.ndarray):
        return b"".join(bytes(v) for v in value.ravel()).decode("latin-1").strip()
    return value.decode("latin-1").strip() if isinstance(value, bytes) else str(value).strip()


def image_size(image: Any) -> tuple[int, ...]:
    """The image's own size (z, y, x) from the attributes of ``DataSetInfo/Image``."""
    return tuple(int(text(image[a])) for a in ("Z", "Y", "X"))


def _numbered(group: Any, prefix: str) -> list[str]:
    names = [n for n in group if re.fullmatch(rf"{prefix} \d+", n)]
    return sorted(names, key=lambda n: int(n.split()[1]))


class ImarisVolume(BoxArray):
    """The full resolution of an Imaris file as ``(T, C, Z, Y, X)``, read box by box from each
    channel's dataset, cut to the image's size."""

    def __init__(self, handle: Any, where: str):
        try:
            level = handle[LEVEL]
            self.times = _numbered(level, "TimePoint")
            self.channels = _numbered(level[self.times[0]], "Channel")
            size = image_size(handle["DataSetInfo/Image"].attrs)
            first = level[self.times[0]][self.channels[0]]["Data"]
        except (KeyError, IndexError, ValueError) as exc:
            raise DensePredError(f"{where} is not an Imaris file densepred can read ({exc}); it needs "
                                 f"{LEVEL}/TimePoint 0/Channel 0/Data and the image size in "
                                 "DataSetInfo/Image") from None
        if any(s > n for s, n in zip(size, first.shape, strict=True)):
            raise DensePredError(f"{where} says its image is {list(size)} voxels (z, y, x), but its data are "
                                 f"{list(first.shape)}; it is damaged")
        check_hdf5_filters(first, where)  # LZ4 in newer files: hdf5plugin's filter
        self.level, self.dtype, self.where = level, np.dtype(first.dtype), where
        self.shape = (len(self.times), len(self.channels), *size)
        self.ndim = 5

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (5 - len(key))
        ranges = [range(n)[k] for k, n in zip(key, self.shape, strict=True)]
        times, channels = ([r] if isinstance(r, int) else r for r in ranges[:2])
        space = tuple(r if isinstance(r, int) else slice(r.start, r.stop, r.step) for r in ranges[2:])
        blocks = [[self._data(t, c)[space] for c in channels] for t in times]
        out = np.asarray(blocks, self.dtype).reshape(len(times), len(channels), *np.shape(blocks[0][0]))
        return out[tuple(0 if isinstance(r, int) else slice(None) for r in ranges[:2])]

    def _data(self, t: int, c: int) -> Any:
        try:
            return self.level[self.times[t]][self.channels[c]]["Data"]
        except KeyError:
            raise DensePredError(f"{self.where} has no data for {self.times[t]}, {self.channels[c]}") from None


def open_imaris(path: Path, where: str, time: int | None) -> Any:
    import h5py

    handle = h5py.File(path, "r")  # kept open: read from lazily
    volume = ImarisVolume(handle, where)
    return channel_first(volume, "TCZYX", where, time, choose_time=f"name a time point, {where}@t=0 to "
                                                                 f"{where}@t={volume.shape[0] - 1}")


def imaris_placement(path: Path) -> Placement | None:
    """Voxel size and the first voxel's centre (z, y, x) from the extent and size Imaris stores."""
    import h5py

    with h5py.File(path, "r") as handle:
        image = handle["DataSetInfo/Image"].attrs
        size = image_size(image)
        low = [float(text(image[f"ExtMin{i}"])) for i in (2, 1, 0)]
        high = [float(text(image[f"ExtMax{i}"])) for i in (2, 1, 0)]
        unit = space_unit([text(image["Unit"])]) if "Unit" in image else None
    voxel = [(h - lo) / n for lo, h, n in zip(low, high, size, strict=True)]
    return checked_placement(voxel, [lo + v / 2 for lo, v in zip(low, voxel, strict=True)], unit)


__all__ = ["ImarisVolume", "imaris_placement", "open_imaris"]
