"""A zarr array on local disk, read from its chunk files and written by whole chunks or shards
in the calling thread where its stored form allows (:mod:`.chunk_files`, :mod:`.shard_files`),
through zarr itself otherwise: the same values and bytes either way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .chunk_files import chunk_files
from .reading import plain_box
from .shard_files import shard_files


class LocalZarr:
    """``array[key]`` and ``array[key] = values`` of a zarr array, by its files where possible."""

    def __init__(self, array: Any):
        self.array, self.shape, self.dtype = array, tuple(array.shape), np.dtype(array.dtype)
        self._reads, self._writes = chunk_files(array), shard_files(array)

    def __getitem__(self, key: Any) -> np.ndarray:
        box = None if self._reads is None else plain_box(key, self.shape)
        return np.asarray(self.array[key]) if box is None else self._reads.read(box)

    def __setitem__(self, key: Any, values: np.ndarray) -> None:
        box = None if self._writes is None else plain_box(key, self.shape)
        if box is None or not self._writes.write(box, values):
            self.array[key] = values

    @property
    def grid(self) -> tuple[int, ...]:
        """The stored grid: shards where sharded, else chunks."""
        if self._writes is not None:
            return self._writes.shard
        return tuple(getattr(self.array, "shards", None) or self.array.chunks)


def scratch_array(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...]) -> LocalZarr:
    """A new float32 array of zeros at ``path`` for sums in progress: uncompressed (compressing
    floats cost time and saved no space), every chunk stored."""
    import zarr

    array = zarr.create_array(path, shape=shape, dtype="float32", chunks=chunks, fill_value=0, overwrite=True,
                              compressors=None)
    return LocalZarr(array.with_config({"write_empty_chunks": True}))


def open_scratch(path: Path) -> LocalZarr:
    import zarr

    return LocalZarr(zarr.open_array(path, mode="r"))
