"""A cheap fingerprint of an array's contents, so a resumed run notices a changed input.

Reading a whole petavoxel volume to hash it is out of the question; instead a fixed grid of
small boxes spread over the array (up to 4 per axis, 16 voxels a side, all channels) is read
and hashed together with the shape and dtype. A change that touches any sampled box changes
the fingerprint. The input's size and modification time (for a zarr folder: its files' count,
total size and latest time) are recorded beside it; a change there with the same sampled
contents is resumed with a warning, since a copy changes the time but not the data.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import ArraySpec
from .reading import read_box

SAMPLES_PER_AXIS = 4
BOX = 16


def array_fingerprint(array: Any, spatial_axes: int) -> str:
    """sha256 of the shape, dtype and a grid of sampled boxes of the last ``spatial_axes`` axes."""
    shape = tuple(int(n) for n in array.shape)
    digest = hashlib.sha256(f"{shape} {np.dtype(array.dtype).str}".encode())
    leading = tuple(slice(None) for _ in shape[:len(shape) - spatial_axes])
    starts = [_starts(n) for n in shape[len(shape) - spatial_axes:]]
    for corner in itertools.product(*starts):
        box = tuple(slice(s, s + BOX) for s in corner)
        digest.update(np.ascontiguousarray(read_box(array, (*leading, *box))).tobytes())
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
    is no change of the input."""
    return file_stamp(spec.path / spec.key if spec.kind == "zarr" and spec.key else spec.path)


def file_stamp(path: Path) -> dict[str, int] | None:
    """Size and modification time (ns) of a file; for a folder (a zarr store) the number of its
    files, their total size and the latest modification time, or None when it holds more than
    :data:`MAX_STAMPED_FILES` files (a walk over millions of chunk files would cost more than
    it is worth)."""
    path = Path(path)
    if not path.is_dir():
        stat = path.stat()
        return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    files, size, latest = 0, 0, 0
    for folder, _, names in os.walk(path):
        for name in names:
            files += 1
            if files > MAX_STAMPED_FILES:
                return None
            stat = os.stat(os.path.join(folder, name))
            size, latest = size + stat.st_size, max(latest, stat.st_mtime_ns)
    return {"files": files, "bytes": size, "mtime_ns": latest}
