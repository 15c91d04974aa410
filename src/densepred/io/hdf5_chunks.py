"""HDF5 outputs compressed by the writers, not inside HDF5.

An HDF5 output is chunked in blocks that divide the output tiles and compressed with the
shuffle filter and deflate (gzip), which every HDF5 reader decodes (h5py, Fiji, ilastik,
MATLAB). HDF5 compresses a chunk inside the library, one chunk at a time, under h5py's lock: a
near-free net wrote HDF5 three times slower than zarr, TIFF or MRC
(``benchmarks/file_outputs.py``). Here each writer shuffles and deflates the chunks its box
covers itself, with Intel ISA-L's deflate (python-isal: a standard zlib stream, 10x faster than
zlib's at level 1 and as small on probability maps; both release the GIL), and only hands the
finished bytes to HDF5 (``write_direct_chunk``): the bytes are what HDF5's filters would
decode, so any reader reads them, and the writers compress side by side.

The parts of chunks a box covers (a model's exact window inside the chunks) are written through
h5py, as is every box of a dataset with other filters.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

try:  # Intel ISA-L's deflate: the same zlib stream, 10x faster at level 1 (benchmarks/file_outputs.py)
    from isal import isal_zlib as zlib
except ImportError:  # a platform without its wheels: the standard library's
    import zlib  # type: ignore[no-redef]

FILTERS = (2, 1)  # HDF5's shuffle, then deflate: the filters densepred's HDF5 outputs are created with


class DirectChunks:
    """Whole chunks of ``dataset`` written as HDF5's filters would store them."""

    def __init__(self, dataset: Any, level: int):
        self.dataset, self.level = dataset, level
        self.chunks = tuple(int(c) for c in dataset.chunks)
        self.shape = tuple(int(n) for n in dataset.shape)
        self.dtype = np.dtype(dataset.dtype)
        self.fill = dataset.fillvalue

    @classmethod
    def of(cls, dataset: Any) -> DirectChunks | None:
        """Direct writes for ``dataset`` where its only filters are shuffle and deflate, else None."""
        if dataset.chunks is None:
            return None
        plist = dataset.id.get_create_plist()
        filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
        if tuple(f[0] for f in filters) != FILTERS:
            return None
        return cls(dataset, int(filters[1][2][0]) if filters[1][2] else 6)

    def write(self, key: tuple[slice, ...], values: np.ndarray) -> bool:
        """Write ``values`` over ``key`` (a slice per axis): each chunk it covers whole (the last
        along an axis may end at the dataset's edge) compressed here, the parts of the others
        through h5py. False, with nothing written, for any other key (steps, integers)."""
        bounds = self._bounds(key)
        if bounds is None:
            return False
        ranges = [range(a // c * c, b, c) for (a, b), c in zip(bounds, self.chunks, strict=True)]
        for corner in itertools.product(*ranges):
            part = tuple((max(a, o), min(b, o + c, n)) for (a, b), o, c, n in
                         zip(bounds, corner, self.chunks, self.shape, strict=True))
            local = tuple(slice(p - a, q - a) for (p, q), (a, _) in zip(part, bounds, strict=True))
            if all(p == o and q == min(o + c, n) for (p, q), o, c, n in
                   zip(part, corner, self.chunks, self.shape, strict=True)):
                self.dataset.id.write_direct_chunk(corner, self.encode(values[local]))
            else:  # part of a chunk: HDF5 decodes it, writes the part in and encodes it again
                self.dataset[tuple(slice(p, q) for p, q in part)] = values[local]
        return True

    def encode(self, block: np.ndarray) -> bytes:
        """A chunk's bytes as HDF5 stores them: padded to the whole chunk (with the fill value),
        shuffled (byte ``j`` of every element together), deflated."""
        if block.shape != self.chunks:
            full = np.full(self.chunks, self.fill, self.dtype)
            full[tuple(slice(0, n) for n in block.shape)] = block
            block = full
        raw = np.ascontiguousarray(block, self.dtype)
        if self.dtype.itemsize > 1:
            raw = np.ascontiguousarray(raw.view(np.uint8).reshape(-1, self.dtype.itemsize).T)
        return zlib.compress(memoryview(raw).cast("B"), self.level)

    def _bounds(self, key: tuple[slice, ...]) -> list[tuple[int, int]] | None:
        """``(start, stop)`` per axis of a key of plain slices (none empty), or None."""
        if len(key) != len(self.shape):
            return None
        bounds = []
        for s, n in zip(key, self.shape, strict=True):
            if not isinstance(s, slice) or s.step not in (None, 1):
                return None
            start, stop, _ = s.indices(n)
            if stop <= start:
                return None
            bounds.append((start, stop))
        return bounds


__all__ = ["DirectChunks"]
