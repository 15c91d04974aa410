"""A cheap fingerprint of an array's contents, so a resumed run notices a changed input.

Reading a whole petavoxel volume to hash it is out of the question; instead a fixed grid of
small boxes spread over the array (up to 4 per axis, 16 voxels a side, all channels) is read
and hashed together with the shape and dtype. A change that touches any sampled box changes
the fingerprint. The input's size and modification time (for a zarr folder: its files' count,
total size and latest time) are recorded beside it; a change there with the same sampled
contents is resumed with a warning, since a copy changes the time but not the data.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import ArraySpec, open_array
from .reading import read_box, read_each, waits
from .tiff_sections import section_files

SAMPLES_PER_AXIS = 4
BOX = 16


def array_fingerprint(array: Any, spatial_axes: int) -> str:
    """sha256 of the shape, dtype and a grid of sampled boxes of the last ``spatial_axes`` axes."""
    shape = tuple(int(n) for n in array.shape)
    digest = hashlib.sha256(f"{shape} {np.dtype(array.dtype).str}".encode())
    leading = tuple(slice(None) for _ in shape[:len(shape) - spatial_axes])
    starts = [_starts(n) for n in shape[len(shape) - spatial_axes:]]
    boxes = [(*leading, *(slice(s, s + BOX) for s in corner)) for corner in itertools.product(*starts)]
    read = functools.partial(read_box, array)
    for values in read_each(read, boxes) if waits(array) else map(read, boxes):  # at once where each waits
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


def _starts(n: int) -> list[int]:
    if n <= BOX:
        return [0]
    count = min(SAMPLES_PER_AXIS, n // BOX)
    return sorted({round(i * (n - BOX) / max(count - 1, 1)) for i in range(count)})


MAX_STAMPED_FILES = 100_000


def input_stamp(spec: ArraySpec) -> dict[str, int] | None:
    """:func:`file_stamp` of the input's own files: of a zarr array inside a container only its
    folder, so an output written into the same container (``c.zarr:raw`` to ``c.zarr:pred``)
    is no change of the input; of a zarr time point (``movie.zarr@t=3``) only the files of
    the chunks (or shards) that hold it, so an acquisition that goes on writing (and appending)
    time points changes no time point before (a change of the metadata that changes what a
    time point reads changes its fingerprint instead). None over HTTP(S): no files to stamp
    here (the fingerprint of its values stays)."""
    if spec.url is not None:
        return None
    if spec.kind == "zarr" and spec.time is not None:
        view = open_array(spec)
        folder = spec.path / view.array.path
        axis = view.axes.index("T")
        index = view.fixed["T"] // (view.array.shards or view.array.chunks)[axis]
        return _stamp(_time_point_files(view.array, folder, axis, index))
    if spec.kind == "n5":
        from .n5 import dataset_folder

        return file_stamp(dataset_folder(spec.path, spec.key))
    if spec.sections:  # its sections, not other files in the folder
        return _stamp(str(p) for p in section_files(spec.path))
    if spec.kind == "precomputed":  # the scale's own folder: a scale added later is no change of this one
        from .precomputed import read_scale

        return file_stamp(spec.path / read_scale(spec.path, spec.key).key)
    return file_stamp(spec.path / spec.key if spec.kind == "zarr" and spec.key else spec.path)


def _time_point_files(array: Any, folder: Path, axis: int, index: int) -> Iterator[str]:
    """The chunk (or shard) files of ``array``, stored in ``folder``, whose index along ``axis``
    is ``index``; nested chunk folders of other indices are not entered."""
    prefix, separator = _chunk_keys(array)
    ndim = len(array.shape)
    for root, folders, names in os.walk(folder):
        key = Path(root).relative_to(folder).as_posix()
        parts = _chunk_coordinates(key, prefix, "/") if separator == "/" else None
        if parts is not None and len(parts) == axis:
            folders[:] = [name for name in folders if name == str(index)]
        for name in names:
            coordinates = _chunk_coordinates(f"{key}/{name}" if key != "." else name, prefix, separator)
            if coordinates is not None and len(coordinates) == ndim and coordinates[axis] == index:
                yield os.path.join(root, name)


def _chunk_keys(array: Any) -> tuple[str, str]:
    """A zarr array's chunk keys: their prefix (``c`` + separator in zarr v3's default
    encoding) and the separator between coordinates, read off a key zarr encodes (as the
    chunk readers find their files, :mod:`.chunk_files`)."""
    key = array.metadata.encode_chunk_key(tuple(range(7, 7 + len(array.shape))))  # digits no separator is
    prefix = key[:key.index("7")]
    return prefix, key[len(prefix) + 1]


def _chunk_coordinates(key: str, prefix: str, separator: str) -> list[int] | None:
    """The coordinates a chunk key names (all those of a folder of nested keys), or None."""
    if prefix:
        if key == prefix.rstrip(separator):
            return []
        if not key.startswith(prefix):
            return None
        key = key[len(prefix):]
    parts = key.split(separator) if key not in ("", ".") else []
    return [int(p) for p in parts] if all(p.isdigit() for p in parts) else None


def file_stamp(path: Path) -> dict[str, int] | None:
    """Size and modification time (ns) of a file; for a folder (a zarr store) the number of its
    files, their total size and the latest modification time, or None when it holds more than
    :data:`MAX_STAMPED_FILES` files (a walk over millions of chunk files would cost more than
    it is worth)."""
    path = Path(path)
    if not path.is_dir():
        stat = path.stat()
        return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return _stamp(os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names)


def _stamp(files: Iterable[str]) -> dict[str, int] | None:
    """The count, total size and latest modification time of ``files``, or None past
    :data:`MAX_STAMPED_FILES`."""
    count, size, latest = 0, 0, 0
    for name in files:
        count += 1
        if count > MAX_STAMPED_FILES:
            return None
        stat = os.stat(name)
        size, latest = size + stat.st_size, max(latest, stat.st_mtime_ns)
    return {"files": count, "bytes": size, "mtime_ns": latest}
