"""Whole shards of densepred's OME-Zarr outputs, encoded and written in the writing thread.

zarr-python encodes every shard written through its one event-loop thread, with the GIL held
for most of it, so two writer threads and the compute wait behind each other. A tile of
densepred's own output covers whole shards (the shards are the tiles), and the output's
codecs are fixed (``sharding_indexed``: ``bytes`` and ``zstd`` inside, a little-endian
``bytes`` index with ``crc32c`` at the end; every chunk stored). For such a write this module
builds the shard itself: each inner chunk compressed by numcodecs' zstd (which releases the
GIL), in zarr's Morton order, the index and its checksum after them, written to a temporary
file renamed over the shard as zarr's local store does. The bytes are zarr-python's own for
the same values (the tests compare them); any other write is zarr's.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from .chunk_files import EMPTY


@dataclass(frozen=True)
class ShardFiles:
    """How to write whole shards of one zarr array."""

    array: Any
    folder: Path
    shape: tuple[int, ...]
    shard: tuple[int, ...]
    inner: tuple[int, ...]
    dtype: np.dtype
    fill: Any
    compress: Any  # a numcodecs codec, or None for raw bytes

    def write(self, box: tuple[slice, ...], values: np.ndarray) -> bool:
        """Write ``values`` over ``box`` if it is whole shards (at the array's end, what of
        them lies inside); False, writing nothing, otherwise."""
        grid = []
        for s, n, c in zip(box, self.shape, self.shard, strict=True):
            if s.start % c or (s.stop % c and s.stop != n):
                return False
            grid.append(range(s.start // c, -(-s.stop // c)))
        values = np.asarray(values)
        if values.shape != tuple(s.stop - s.start for s in box) or values.dtype != self.dtype:
            return False
        for index in product(*grid):
            part = tuple(slice(i * c - s.start, min((i + 1) * c, n) - s.start)
                         for i, c, s, n in zip(index, self.shard, box, self.shape, strict=True))
            self._put(self.folder / self.array.metadata.encode_chunk_key(index), self._encode(values[part]))
        return True

    def _encode(self, values: np.ndarray) -> list[bytes]:
        """One shard of ``values``, padded with the fill value at the array's end, where inner
        chunks wholly outside the array are not stored."""
        inside = values.shape
        if values.shape != self.shard:
            padded = np.full(self.shard, self.fill, self.dtype)
            padded[tuple(slice(0, n) for n in values.shape)] = values
            values = padded
        counts = tuple(s // i for s, i in zip(self.shard, self.inner, strict=True))
        index = np.full((*counts, 2), EMPTY, "<u8")
        pieces, offset = [], 0
        for chunk in _morton_order(counts):
            if any(c * i >= n for c, i, n in zip(chunk, self.inner, inside, strict=True)):
                continue
            box = tuple(slice(c * i, (c + 1) * i) for c, i in zip(chunk, self.inner, strict=True))
            raw = np.ascontiguousarray(values[box], self.dtype).tobytes()
            data = raw if self.compress is None else self.compress.encode(raw)
            index[chunk] = (offset, len(data))
            pieces.append(data)
            offset += len(data)
        return [*pieces, _with_checksum(index.tobytes())]

    @staticmethod
    def _put(path: Path, pieces: list[bytes]) -> None:
        """Written whole under a temporary name, then renamed over ``path`` (as zarr's local
        store writes), so a kill never leaves a cut shard under its final name."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{uuid.uuid4().hex}.partial")
        try:
            with open(partial, "wb") as file:
                file.writelines(pieces)
            partial.replace(path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise


def shard_files(array: Any) -> ShardFiles | None:
    """The shard writer of ``array`` where its stored form is densepred's own, else None."""
    import zarr
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
    from zarr.storage import LocalStore

    if not isinstance(array, zarr.Array) or not isinstance(array.store_path.store, LocalStore):
        return None
    metadata, dtype = array.metadata, np.dtype(array.dtype)
    codecs = getattr(metadata, "codecs", ())
    if metadata.zarr_format != 3 or len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding = codecs[0]
    inner, index = sharding.codecs, sharding.index_codecs
    little = dtype.itemsize == 1 or (dtype.byteorder in "=<" and sys.byteorder == "little")
    if (not little or dtype.kind not in "biuf" or not array.config.write_empty_chunks
            or sharding.index_location.value != "end" or len(inner) > 2 or not isinstance(inner[0], BytesCodec)
            or [type(c) for c in index] != [BytesCodec, Crc32cCodec] or index[0].endian.value != "little"
            or (len(inner) == 2 and not isinstance(inner[1], ZstdCodec))):
        return None
    compress = None
    if len(inner) == 2:
        from numcodecs import Zstd

        compress = Zstd(level=inner[1].level, checksum=inner[1].checksum)
    folder = Path(array.store_path.store.root) / array.store_path.path
    return ShardFiles(array, folder, tuple(array.shape), tuple(metadata.chunk_grid.chunk_shape),
                      tuple(sharding.chunk_shape), dtype, metadata.fill_value, compress)


def _morton_order(counts: tuple[int, ...]) -> Any:
    from zarr.core.indexing import morton_order_iter

    return morton_order_iter(counts)


def _with_checksum(index: bytes) -> bytes:
    import google_crc32c

    return index + np.uint32(google_crc32c.value(index)).tobytes()

