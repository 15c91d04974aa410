"""Shards of densepred's OME-Zarr outputs, encoded and written in the writing thread.

zarr-python encodes every shard written through its one event-loop thread, with the GIL held
for most of it, so two writer threads and the compute wait behind each other. densepred's
own outputs have fixed codecs (``sharding_indexed``: ``bytes`` and ``zstd`` inside, a
little-endian ``bytes`` index with ``crc32c`` at the end; every chunk stored), and their
writes are whole inner chunks: a tile covers whole shards of level 0, its downsampled part
whole inner chunks of a pyramid level. For such a write this module builds the shard itself:
each inner chunk compressed by numcodecs' zstd (which releases the GIL), the chunks already
stored in a shard written in part kept as they are, all in zarr's Morton order, the index and
its checksum after them, written to a temporary file renamed over the shard as zarr's local
store does. The bytes are zarr-python's own for the same writes (the tests compare them); any
other write is zarr's.
"""

from __future__ import annotations

import functools
import sys
import uuid
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from .chunk_files import EMPTY, Raw, array_folder, compressor_of, index_checksum, index_length, shard_index


@dataclass(frozen=True)
class ShardFiles:
    """How to write the shards of one zarr array, whole or by whole inner chunks."""

    array: Any
    folder: Path
    shape: tuple[int, ...]
    shard: tuple[int, ...]
    inner: tuple[int, ...]
    dtype: np.dtype
    fill: Any
    compress: Any  # a numcodecs zstd, or chunk_files.Raw
    indexed: bool = True  # False: an array without shards, each chunk its own file (inner = shard)

    def write(self, box: tuple[slice, ...], values: np.ndarray) -> bool:
        """Write ``values`` over ``box`` if it is made of whole inner chunks (at the array's
        end, what of them lies inside); False, writing nothing, otherwise. A shard the box
        covers is written anew; one it covers in part keeps its other stored chunks (the caller
        writes one shard from one thread at a time, as with zarr)."""
        values = np.asarray(values)
        if (values.shape != tuple(s.stop - s.start for s in box) or values.dtype != self.dtype
                or any(s.start % i or (s.stop % i and s.stop != n) for s, i, n in zip(box, self.inner, self.shape,
                                                                                       strict=True))):
            return False
        for index in product(*(range(s.start // c, -(-s.stop // c)) for s, c in zip(box, self.shard, strict=True))):
            origin = tuple(i * c for i, c in zip(index, self.shard, strict=True))
            part = tuple(slice(max(s.start, o), min(s.stop, o + c, n))
                         for s, o, c, n in zip(box, origin, self.shard, self.shape, strict=True))
            path = self.folder / self.array.metadata.encode_chunk_key(index)
            whole = all(p.start == o and p.stop == min(o + c, n)
                        for p, o, c, n in zip(part, origin, self.shard, self.shape, strict=True))
            chunks = {} if whole else self._stored(path)
            local = tuple(slice(p.start - s.start, p.stop - s.start) for p, s in zip(part, box, strict=True))
            chunks.update(self._encode(values[local], tuple(p.start - o for p, o in zip(part, origin, strict=True))))
            self._put(path, self._assemble(chunks))
        return True

    def _encode(self, values: np.ndarray, corner: tuple[int, ...]) -> dict[tuple[int, ...], bytes]:
        """The inner chunks of ``values`` (placed at ``corner`` of its shard), each padded with
        the fill value where it leaves the array."""
        encoded = {}
        for chunk in product(*(range(a // i, -(-(a + n) // i)) for a, n, i in zip(corner, values.shape, self.inner,
                                                                                   strict=True))):
            box = tuple(slice(c * i - a, (c + 1) * i - a) for c, i, a in zip(chunk, self.inner, corner, strict=True))
            block = values[box]
            if block.shape != self.inner:
                padded = np.full(self.inner, self.fill, self.dtype)
                padded[tuple(slice(0, n) for n in block.shape)] = block
                block = padded
            encoded[chunk] = self.compress.encode(np.ascontiguousarray(block))
        return encoded

    def _assemble(self, chunks: dict[tuple[int, ...], bytes]) -> list[bytes]:
        """A shard's bytes: its stored chunks in zarr's Morton order, then the index and its
        crc32c; chunks not stored have the empty entry. Without shards: the one chunk's bytes."""
        if not self.indexed:
            return list(chunks.values())
        index = np.full((*self._counts(), 2), EMPTY, "<u8")
        pieces, offset = [], 0
        for chunk in morton_order(self._counts()):
            data = chunks.get(chunk)
            if data is not None:
                index[chunk] = (offset, len(data))
                pieces.append(data)
                offset += len(data)
        return [*pieces, _with_checksum(index.tobytes())]

    def _stored(self, path: Path) -> dict[tuple[int, ...], bytes]:
        """The stored inner chunks of the shard file at ``path`` (none if it does not exist)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {}
        index = shard_index(data[-index_length(self._counts(), True):], True, list(self._counts()))
        return {chunk: data[int(index[chunk][0]):int(index[chunk][0] + index[chunk][1])]
                for chunk in product(*map(range, self._counts())) if int(index[chunk][0]) != EMPTY}

    def _counts(self) -> tuple[int, ...]:
        return tuple(s // i for s, i in zip(self.shard, self.inner, strict=True))

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
    """The writer of ``array``'s shards where its stored form is densepred's own, or of its
    chunks where it has no shards and stores them as ``bytes`` plus at most zstd; else None."""
    import zarr
    from zarr.codecs import ShardingCodec
    from zarr.storage import LocalStore

    if not isinstance(array, zarr.Array) or not isinstance(array.store_path.store, LocalStore):
        return None
    metadata, dtype = array.metadata, np.dtype(array.dtype)
    codecs = getattr(metadata, "codecs", ())
    little = dtype.itemsize == 1 or (dtype.byteorder in "=<" and sys.byteorder == "little")
    if (metadata.zarr_format != 3 or not little or dtype.kind not in "biuf" or not array.config.write_empty_chunks
            or not codecs):
        return None
    grid, sharding = tuple(metadata.chunk_grid.chunk_shape), codecs[0]
    if not isinstance(sharding, ShardingCodec):
        compress = _encoder(codecs)
        return None if compress is None else ShardFiles(array, array_folder(array), tuple(array.shape), grid, grid,
                                                        dtype, metadata.fill_value, compress, indexed=False)
    compress = _encoder(sharding.codecs)
    if (len(codecs) > 1 or compress is None or sharding.index_location.value != "end"
            or index_checksum(sharding.index_codecs) is not True):
        return None
    return ShardFiles(array, array_folder(array), tuple(array.shape), grid, tuple(sharding.chunk_shape), dtype,
                      metadata.fill_value, compress)


def _encoder(codecs: tuple[Any, ...]) -> Any:
    """The codec of ``bytes`` alone or ``bytes, zstd`` (written as zarr writes them), else None."""
    from numcodecs import Zstd

    codec = compressor_of(codecs)
    return codec if isinstance(codec, Raw | Zstd) else None


@functools.lru_cache(maxsize=64)
def morton_order(counts: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """A shard's inner chunks in the order zarr stores them: by compressed Morton code (as
    Neuroglancer's precomputed format defines it), the coordinates' bits interleaved from the
    lowest, each axis leaving the interleave once its ``ceil(log2(count))`` bits are used.

    Example:
        >>> morton_order((2, 3))
        ((0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2))
    """
    bits = [(count - 1).bit_length() for count in counts]

    def code(chunk: tuple[int, ...]) -> int:
        value, place = 0, 0
        for bit in range(max(bits, default=0)):
            for axis, coordinate in enumerate(chunk):
                if bit < bits[axis]:
                    value |= ((coordinate >> bit) & 1) << place
                    place += 1
        return value

    return tuple(sorted(product(*map(range, counts)), key=code))


def _with_checksum(index: bytes) -> bytes:
    import google_crc32c

    return index + np.uint32(google_crc32c.value(index)).tobytes()

