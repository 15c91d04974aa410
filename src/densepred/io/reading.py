"""Reading a box of a stored array, with one clear line when storage fails.

A corrupt or truncated chunk (a failed decompression), a truncated HDF5 file or a file gone
mid-run raises deep inside zarr, numcodecs or h5py; :func:`read_box` turns that into a
:class:`~densepred.errors.DensePredError` that names the first unreadable chunk. Boxes of zarr
arrays on local disk are read from their chunk files (:mod:`.chunk_files`) where their stored
form allows.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from ..errors import DensePredError
from .chunk_files import chunk_files

MAX_CHUNKS_SEARCHED = 4096


class BoxArray:
    """What NumPy asks of an array read box by box (``shape`` and ``self[box]`` given):
    ``len()`` and ``np.asarray()`` of the whole."""

    shape: tuple[int, ...]

    def __getitem__(self, key: Any) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[tuple(slice(None) for _ in self.shape)]
        return data if dtype is None else data.astype(dtype)


def read_box(array: Any, key: tuple[slice, ...]) -> np.ndarray:
    """``array[key]`` as a NumPy array; a storage failure is one line naming the chunk."""
    try:
        files, box = chunk_files(array), plain_box(key, tuple(getattr(array, "shape", ())))
        return files.read(box) if files is not None and box is not None else np.asarray(array[key])
    except (DensePredError, MemoryError):
        raise
    except Exception as exc:  # a corrupt or truncated chunk, a vanished file
        raise DensePredError(unreadable(array, key, exc)) from None


def plain_box(key: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    """``key`` as one non-empty slice of step 1 per axis, inside ``shape``; None for other keys."""
    key = key if isinstance(key, tuple) else (key,)
    if len(key) > len(shape) or not all(isinstance(k, slice) for k in key):
        return None
    box = tuple(slice(*k.indices(n)) for k, n in zip((*key, *[slice(None)] * (len(shape) - len(key))), shape,
                                                      strict=True))
    return box if all(s.step == 1 and s.stop > s.start for s in box) else None


def unreadable(image: Any, key: tuple[slice, ...], error: Exception) -> str:
    """Why reading ``image[key]`` failed, naming the first chunk that cannot be read (zarr and
    HDF5 arrays; found by reading the box's chunks one by one) or else the box."""
    where = _array_name(image)
    chunks = getattr(image, "shards", None) or getattr(image, "chunks", None)
    shape = tuple(image.shape)
    box = [(k.start or 0, shape[i] if k.stop is None else k.stop) for i, k in enumerate(key)]
    if chunks is not None and len(chunks) == len(shape):
        grid = [range(a // c, -(-b // c)) for (a, b), c in zip(box, chunks, strict=True)]
        if 0 < math.prod(len(r) for r in grid) <= MAX_CHUNKS_SEARCHED:
            for index in itertools.product(*grid):
                try:
                    image[tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunks, shape,
                                                                                     strict=True))]
                except Exception as exc:
                    return (f"chunk {list(index)} of {where} (chunk shape {list(chunks)}) is unreadable: "
                            f"{_reason(exc)}; the input is corrupt or truncated there")
    text = ", ".join(f"{a}:{b}" for a, b in box)
    return f"reading [{text}] of {where} failed: {_reason(error)}; the input is corrupt or truncated there"


def _array_name(image: Any) -> str:
    store = getattr(image, "store_path", None)  # zarr
    if store is not None:
        return str(store).removeprefix("file://")
    file = getattr(image, "file", None)  # h5py
    if file is not None and hasattr(file, "filename"):
        return f"{file.filename}:{image.name}"
    return f"the input ({type(image).__name__})"


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
