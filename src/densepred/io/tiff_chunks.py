"""Compressed or tiled TIFF inputs, read lazily by their own strips or tiles.

An uncompressed TIFF is memory-mapped. One that is compressed (LZW, zlib, zstd; what most
acquisition software and libtiff write) or stored in tiles (OME-TIFF pyramids) cannot be, and
was read whole into memory: a stack larger than memory could not be predicted, and each block
of a cluster run decoded the whole file again. tifffile exposes a series' strips or tiles as
the chunks of a zarr store (each decoded when read); :class:`TiffChunks` reads a box through
it, chunk by chunk.

A strip spans the page's width, so neighbouring tiles along x decode the same strips, and a
file written with one strip per page has its whole pages as chunks. The chunks decoded for
recent boxes are kept, up to twice the chunks of one box and at most :data:`CACHE_BYTES`:
then each strip is decoded once per row of tiles. A box whose chunks alone are more than half
of that (whole pages of a large image) is read without keeping them, as keeping them could
not save a decode before they are evicted.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DensePredError
from .chunk_files import chunk_grid, chunk_overlap
from .reading import BoxArray, plain_box

CACHE_BYTES = 256 * 2**20  # decoded chunks kept per open file


class TiffChunks(BoxArray):
    """Series 0 (level 0) of a TIFF as an array: ``shape``, ``dtype``, ``chunks`` (its strips or
    tiles) and ``array[box]``, decoded chunk by chunk; safe to read from several threads."""

    def __init__(self, path: str | Path, array: Any = None):
        """``array``: what to read instead of the file's own zarr view (a folder of sections,
        :mod:`.tiff_sections`); ``path`` then names it in messages."""
        import tifffile
        import zarr

        self.path = str(path)
        self.store_path = self.path  # how a read error names the input (io.reading)
        self.array = array if array is not None else zarr.open_array(
            tifffile.imread(path, aszarr=True, series=0, level=0), mode="r")
        self.shape = tuple(int(n) for n in self.array.shape)
        self.dtype = np.dtype(self.array.dtype)
        self.ndim = len(self.shape)
        self.chunks = tuple(int(n) for n in self.array.chunks)
        try:  # a codec missing here fails at the first read: say so now, not as a corrupt file later
            self.array[tuple(slice(0, 1) for _ in self.shape)]
        except KeyError as exc:
            raise DensePredError(f"{path} cannot be decoded here: {str(exc).strip(chr(34))}; install it (pip "
                                 "install imagecodecs) or save the file uncompressed") from None
        self._kept: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._kept_bytes = 0
        self._lock = threading.Lock()

    def __getitem__(self, key: Any) -> np.ndarray:
        box = plain_box(key if isinstance(key, tuple) else (key,), self.shape)
        if box is None:  # integers, steps: zarr's own indexing
            return np.asarray(self.array[key])
        indices = list(chunk_grid(box, self.chunks))
        keep = 2 * len(indices) * int(np.prod(self.chunks)) * self.dtype.itemsize <= CACHE_BYTES
        out = np.empty(tuple(s.stop - s.start for s in box), self.dtype)
        for index, chunk in self._chunks(indices, keep).items():
            source, target = chunk_overlap(box, index, self.chunks)
            out[target] = chunk[source]
        return out

    def _chunks(self, indices: list[tuple[int, ...]], keep: bool) -> dict[tuple[int, ...], np.ndarray]:
        """The chunks at ``indices``: those kept, and the others read in one call to zarr (the box
        around them, which zarr decodes chunk by chunk at once), kept too where ``keep``."""
        with self._lock:
            found = {i: self._kept[i] for i in indices if i in self._kept}
            for index in found:
                self._kept.move_to_end(index)
        missing = [i for i in indices if i not in found]
        if not missing:
            return found
        low = [min(i[axis] for i in missing) for axis in range(self.ndim)]
        high = [max(i[axis] for i in missing) + 1 for axis in range(self.ndim)]
        region = np.asarray(self.array[tuple(slice(a * c, min(b * c, n)) for a, b, c, n in
                                             zip(low, high, self.chunks, self.shape, strict=True))])
        read = {i: region[tuple(slice((a - o) * c, (a - o + 1) * c) for a, o, c in zip(i, low, self.chunks,
                                                                                         strict=True))]
                for i in missing}
        if keep and len(read) > 1:  # each kept chunk its own memory, so evicting it frees it
            read = {i: chunk.copy() for i, chunk in read.items()}
        if keep:
            with self._lock:
                for index, chunk in read.items():
                    if index not in self._kept:
                        self._kept[index] = chunk
                        self._kept_bytes += chunk.nbytes
                while self._kept_bytes > CACHE_BYTES and self._kept:
                    self._kept_bytes -= self._kept.popitem(last=False)[1].nbytes
        return found | read


def kept_bytes_of(image: Any) -> int:
    """The most bytes ``image`` keeps of what it decoded (:data:`CACHE_BYTES` for a compressed
    TIFF, also through the views over it: a channel-first image, an axes view), else 0; the
    memory budget of a run sets them aside."""
    for _ in range(4):
        if isinstance(image, TiffChunks):
            return CACHE_BYTES
        inner = getattr(image, "image", None)  # a ChannelFirst's image, an AxesView's array
        image = inner if inner is not None else getattr(image, "array", None)
        if image is None:
            return 0
    return 0
