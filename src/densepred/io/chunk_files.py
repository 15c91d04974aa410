"""Boxes of a zarr array on local disk, read straight from its chunk files.

zarr-python reads a box chunk by chunk through its one event-loop thread, a few hundred
microseconds of Python per chunk with the GIL held; the compute and writer threads of a job
wait behind it. For the common stored forms this module reads the same bytes itself: each
chunk file is read and decoded by numcodecs (both release the GIL) in the calling thread, and
copied into the box. The values are zarr's own, checked against it in the tests.

Read this way: arrays in a :class:`zarr.storage.LocalStore` with a regular chunk grid, zarr
format 2 (C order, no filters, any numcodecs compressor) or 3 (``bytes`` plus at most one of
``zstd``, ``gzip``, ``blosc``, optionally inside ``sharding_indexed`` with a ``bytes`` and
optional ``crc32c`` index). Everything else, and every chunk or shard that is not stored
(its fill value), is read by zarr itself.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

EMPTY = 2**64 - 1  # a shard index's offset and length of a chunk not stored
Decode = Callable[[bytes], Any]


class Raw:
    """The codec of ``bytes`` alone: a chunk's stored bytes are its values."""

    @staticmethod
    def decode(raw: bytes) -> bytes:
        return raw

    @staticmethod
    def encode(values: np.ndarray) -> bytes:
        return np.ascontiguousarray(values).tobytes()


@dataclass(frozen=True)
class Shards:
    """How inner chunks sit in a shard file: their grid, their index's place and checksum."""

    inner: tuple[int, ...]
    index_at_end: bool
    checksum: bool

    def index_bytes(self, outer: tuple[int, ...]) -> int:
        return index_length([o // i for o, i in zip(outer, self.inner, strict=True)], self.checksum)


@dataclass(frozen=True)
class ChunkFiles:
    """A zarr array's chunk files: where they are, their grid, how one is decoded."""

    array: Any
    folder: Path
    chunks: tuple[int, ...]  # the stored grid (shards where sharded)
    dtype: np.dtype  # of the values read, as zarr gives them
    stored: np.dtype  # of the values in a chunk file (the byte order written)
    decode: Decode
    shards: Shards | None

    def read(self, box: tuple[slice, ...]) -> np.ndarray:
        """The array's values in ``box`` (slices with step 1, inside the array)."""
        out = np.empty(tuple(s.stop - s.start for s in box), self.dtype)
        for index in chunk_grid(box, self.chunks):
            path = self.folder / self.array.metadata.encode_chunk_key(index)
            try:
                with open(path, "rb") as file:
                    if self.shards is None:
                        self._place(out, box, index, self.chunks, file.read())
                    else:
                        self._read_shard(out, box, index, file)
            except FileNotFoundError:  # a chunk not stored: its fill value, as zarr gives it
                self._from_zarr(out, box, index, self.chunks)
        return out

    def _read_shard(self, out: np.ndarray, box: tuple[slice, ...], shard: tuple[int, ...], file: Any) -> None:
        assert self.shards is not None
        inner = self.shards.inner
        size = os.fstat(file.fileno()).st_size
        length = self.shards.index_bytes(self.chunks)
        index = shard_index(os.pread(file.fileno(), length, size - length if self.shards.index_at_end else 0),
                             self.shards.checksum, [o // i for o, i in zip(self.chunks, inner, strict=True)])
        inside = tuple(slice(max(b.start, s * o), min(b.stop, (s + 1) * o))
                       for b, s, o in zip(box, shard, self.chunks, strict=True))
        for chunk in chunk_grid(inside, inner):
            local = tuple(c - s * (o // i) for c, s, o, i in zip(chunk, shard, self.chunks, inner, strict=True))
            offset, nbytes = (int(v) for v in index[local])
            if offset == EMPTY and nbytes == EMPTY:
                self._from_zarr(out, box, chunk, inner)
            else:
                self._place(out, box, chunk, inner, os.pread(file.fileno(), nbytes, offset))

    def _place(self, out: np.ndarray, box: tuple[slice, ...], index: tuple[int, ...], shape: tuple[int, ...],
               raw: bytes) -> None:
        flat = np.frombuffer(self.decode(raw), self.stored)
        if flat.size != math.prod(shape):
            raise ValueError(f"a chunk decoded to {flat.size} values, not {math.prod(shape)}")
        source, target = chunk_overlap(box, index, shape)
        out[target] = flat.reshape(shape)[source]

    def _from_zarr(self, out: np.ndarray, box: tuple[slice, ...], index: tuple[int, ...],
                   shape: tuple[int, ...]) -> None:
        source, target = chunk_overlap(box, index, shape)
        stored = tuple(slice(i * c + s.start, i * c + s.stop) for i, c, s in zip(index, shape, source, strict=True))
        out[target] = np.asarray(self.array[stored])


def chunk_files(array: Any) -> ChunkFiles | None:
    """The chunk files of ``array`` where this module reads its stored form, else None."""
    import zarr
    from zarr.storage import LocalStore

    if not isinstance(array, zarr.Array) or not isinstance(array.store_path.store, LocalStore):
        return None
    metadata, dtype = array.metadata, np.dtype(array.dtype)
    if dtype.hasobject or dtype.kind not in "biufc":
        return None
    form = _v2_form(metadata, dtype) if metadata.zarr_format == 2 else _v3_form(metadata, dtype)
    if form is None:
        return None
    return ChunkFiles(array, array_folder(array), form[0], dtype, *form[1:])


def array_folder(array: Any) -> Path:
    """The folder of a zarr array in a local store."""
    return Path(str(array.store_path.store.root)) / array.store_path.path


Form = tuple[tuple[int, ...], np.dtype, Decode, "Shards | None"]  # grid, stored dtype, decoder, shards


def _v2_form(metadata: Any, dtype: np.dtype) -> Form | None:
    if metadata.filters or metadata.order != "C":
        return None
    codec = metadata.compressor
    return tuple(metadata.chunks), dtype, (codec or Raw()).decode, None


def _v3_form(metadata: Any, dtype: np.dtype) -> Form | None:
    grid = getattr(metadata.chunk_grid, "chunk_shape", None)
    plan = _v3_plan(metadata.codecs) if metadata.codecs else None
    if grid is None or plan is None:
        return None
    return tuple(grid), _stored_dtype(metadata.codecs, dtype), plan[0], plan[1]


def _v3_plan(codecs: tuple[Any, ...]) -> tuple[Decode, Shards | None] | None:
    from zarr.codecs import ShardingCodec

    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        sharding = codecs[0]
        codec, checksum = compressor_of(sharding.codecs), index_checksum(sharding.index_codecs)
        if codec is None or checksum is None:
            return None
        return codec.decode, Shards(tuple(sharding.chunk_shape), sharding.index_location.value == "end", checksum)
    codec = compressor_of(codecs)
    return None if codec is None else (codec.decode, None)


def compressor_of(codecs: tuple[Any, ...]) -> Any:
    """The numcodecs codec of ``bytes`` plus at most one of zstd, gzip and blosc (:class:`Raw`
    for ``bytes`` alone); None for other codecs."""
    from numcodecs import GZip, Zstd
    from numcodecs.blosc import Blosc
    from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ZstdCodec

    if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2:
        return None
    if len(codecs) == 1:
        return Raw()
    codec = codecs[1]
    if isinstance(codec, ZstdCodec):
        return Zstd(level=codec.level, checksum=codec.checksum)
    if isinstance(codec, GzipCodec):
        return GZip(level=codec.level)
    if isinstance(codec, BloscCodec):
        return Blosc()
    return None


def index_checksum(codecs: tuple[Any, ...]) -> bool | None:
    """Whether a shard index ends in a crc32c checksum; None for index codecs not read here."""
    from zarr.codecs import BytesCodec, Crc32cCodec

    if not codecs or not isinstance(codecs[0], BytesCodec) or getattr(codecs[0].endian, "value", "little") != "little":
        return None
    if len(codecs) == 1:
        return False
    return True if len(codecs) == 2 and isinstance(codecs[1], Crc32cCodec) else None


def index_length(counts: Sequence[int], checksum: bool) -> int:
    """The bytes of a shard index over ``counts`` inner chunks per axis: an offset and a length
    of 8 bytes each per chunk, then 4 of crc32c where checksummed."""
    return 16 * math.prod(counts) + 4 * checksum


def shard_index(raw: bytes, checksum: bool, grid: list[int]) -> np.ndarray:
    """A shard's index as ``(*grid, 2)`` offsets and lengths; a checksum that fails raises."""
    if checksum:
        import google_crc32c

        body, stored = raw[:-4], raw[-4:]
        if np.uint32(google_crc32c.value(body)).tobytes() != stored:
            raise ValueError("a shard index's crc32c checksum does not match")
        raw = body
    return np.frombuffer(raw, "<u8").reshape(*grid, 2)


def chunk_grid(box: tuple[slice, ...], chunks: tuple[int, ...]) -> product[tuple[int, ...]]:
    """The indices of the chunks (of shape ``chunks``) that ``box`` crosses, in C order."""
    return product(*(range(s.start // c, -(-s.stop // c)) for s, c in zip(box, chunks, strict=True)))


def chunk_overlap(box: tuple[slice, ...], index: tuple[int, ...],
             shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The part of chunk ``index`` (of ``shape``) inside ``box``: slices in the chunk and in the box."""
    source, target = [], []
    for s, i, c in zip(box, index, shape, strict=True):
        lo, hi = max(s.start, i * c), min(s.stop, (i + 1) * c)
        source.append(slice(lo - i * c, hi - i * c))
        target.append(slice(lo - s.start, hi - s.start))
    return tuple(source), tuple(target)


def _stored_dtype(codecs: tuple[Any, ...], dtype: np.dtype) -> np.dtype:
    """``dtype`` in the byte order of the array's ``bytes`` codec (inside sharding where sharded)."""
    from zarr.codecs import ShardingCodec

    first = codecs[0].codecs[0] if isinstance(codecs[0], ShardingCodec) else codecs[0]
    endian = getattr(getattr(first, "endian", None), "value", None)
    if dtype.itemsize == 1 or endian is None:
        return dtype
    return dtype.newbyteorder("<" if endian == "little" else ">")
