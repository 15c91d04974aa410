"""Reading a box of a stored array, with one clear line when storage fails.

A corrupt or truncated chunk (a failed decompression), a truncated HDF5 file or a file gone
mid-run raises deep inside zarr, numcodecs or h5py; :func:`read_box` turns that into a
:class:`~densepred.errors.DensePredError` that names the first unreadable chunk. Boxes of zarr
arrays on local disk are read from their chunk files (:mod:`.chunk_files`) where their stored
form allows. Reads over HTTP(S) are tried again after transient failures (:mod:`.locations`)
before they reach here, and where each read waits on a server (:func:`waits`), several are
made at once (:func:`read_each`): a box's blocks, a fingerprint's boxes.
"""

from __future__ import annotations

import functools
import itertools
import math
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import numpy as np

from ..errors import DensePredError, one_line
from .chunk_files import chunk_files, chunk_grid, chunk_overlap
from .locations import RETRIES, failure, refused, server_failed

MAX_CHUNKS_SEARCHED = 4096
READ_THREADS = 16  # reads at once where each waits on storage (a request over HTTP(S)), not on the CPU

T = TypeVar("T")
R = TypeVar("R")


def read_each(read: Callable[[T], R], items: Sequence[T], pool: str = "boxes") -> list[R]:
    """``read(item)`` of each item, :data:`READ_THREADS` at once, in order; the first failure
    raised. Boxes and the blocks of one box have pools of their own, so a box read in the
    first waits on blocks read in the second, never on itself."""
    if len(items) <= 1:
        return [read(item) for item in items]
    return _readers(pool).map(read, items)


class _Readers:
    """Daemon threads that read: a process that exits (Ctrl-C, an error) does not wait for the
    requests they still have in flight on a server that stalls, as it would for a
    ``ThreadPoolExecutor``'s threads; they only read, so nothing is left half-written."""

    def __init__(self, name: str):
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for i in range(READ_THREADS):
            threading.Thread(target=self._serve, name=f"densepred-read-{name}-{i}", daemon=True).start()

    def _serve(self) -> None:
        while True:
            read, item, future = self._work.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(read(item))
                except BaseException as exc:  # handed to the caller, which raises it
                    future.set_exception(exc)

    def map(self, read: Callable[[T], R], items: Sequence[T]) -> list[R]:
        futures: list[Future[R]] = [Future() for _ in items]
        for item, future in zip(items, futures, strict=True):
            self._work.put((read, item, future))
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()  # those not started yet, after a failure or an interrupt


def waits(array: Any) -> bool:
    """Whether each read of ``array`` waits on a server: a block array or zarr store over
    HTTP(S), itself or under views (:class:`~densepred.io.axes.AxesView`, ``ChannelFirst``)."""
    for _ in range(8):  # views of views, never round in a circle
        store = getattr(getattr(array, "store_path", None), "store", None)
        if getattr(array, "waits", False) is True or "http" in getattr(getattr(store, "fs", None), "protocol", ()):
            return True
        inner = getattr(array, "array", None)
        array = inner if inner is not None else getattr(array, "image", None)
        if array is None:
            return False
    return False


@functools.cache
def _readers(name: str) -> _Readers:
    return _Readers(name)


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


class BlockArray(BoxArray):
    """An array stored in blocks of ``chunks`` on a regular grid, each read by :meth:`block`
    in the calling thread (as :mod:`.chunk_files` reads zarr chunks), so several threads read
    at once; a block not stored reads as 0. Integer and step indexing read the box around."""

    chunks: tuple[int, ...]
    dtype: np.dtype
    waits: bool = False  # each block a request that waits on a server: a box's blocks are read at once

    def block(self, index: tuple[int, ...]) -> np.ndarray | None:
        """The block at grid ``index``, cut to the array's edge; None where it is not stored."""
        raise NotImplementedError

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        box = plain_box(key, self.shape)
        if box is None:  # integers, steps: read the box around them, then take them from it
            box, local = box_around(key, self.shape)
            if any(s.stop <= s.start for s in box):
                return np.zeros(tuple(s.stop - s.start for s in box), self.dtype)[local]
            return self[box][local]
        out = np.zeros(tuple(s.stop - s.start for s in box), self.dtype)
        indices = list(chunk_grid(box, self.chunks))
        blocks = read_each(self.block, indices, "blocks") if self.waits else map(self.block, indices)
        for index, block in zip(indices, blocks, strict=False):
            if block is not None:
                source, target = chunk_overlap(box, index, self.chunks)
                out[target] = block[source]
        return out


def box_around(key: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[Any, ...]]:
    """The box (step 1) around the voxels an index of integers and slices selects, and the
    same index within that box; the whole array for any other index."""
    box, local = [], []
    if len(key) > len(shape):
        return tuple(slice(0, n) for n in shape), key
    for k, n in zip((*key, *[slice(None)] * (len(shape) - len(key))), shape, strict=True):
        if isinstance(k, int | np.integer) and -n <= k < n:
            box.append(slice(int(k) % n, int(k) % n + 1))
            local.append(0)
        elif isinstance(k, slice) and (k.step or 1) > 0:
            start, stop, step = k.indices(n)
            box.append(slice(start, max(start, stop)))
            local.append(slice(0, max(0, stop - start), step))
        else:
            return tuple(slice(0, n) for n in shape), key
    return tuple(box), tuple(local)


def read_box(array: Any, key: tuple[slice, ...]) -> np.ndarray:
    """``array[key]`` as a NumPy array; a storage failure is one line naming the chunk."""
    try:
        files, box = chunk_files(array), plain_box(key, tuple(getattr(array, "shape", ())))
        return files.read(box) if files is not None and box is not None else np.asarray(array[key])
    except (DensePredError, MemoryError):
        raise
    except Exception as exc:  # a corrupt or truncated chunk, a vanished file, a server that did not answer
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
    if server_failed(error):  # the server's answer, not the data: no chunk to look for
        return f"reading {where} failed: {reason(error)}"
    chunks = getattr(image, "shards", None) or getattr(image, "chunks", None)
    shape = tuple(image.shape)
    key = (*key, *[slice(None)] * (len(shape) - len(key)))
    box = [k.indices(n)[:2] for k, n in zip(key, shape, strict=True)]
    if chunks is not None and len(chunks) == len(shape) and all(c > 0 for c in chunks):
        grid = [range(a // c, -(-b // c)) for (a, b), c in zip(box, chunks, strict=True)]
        if 0 < math.prod(len(r) for r in grid) <= MAX_CHUNKS_SEARCHED:
            for index in itertools.product(*grid):
                try:
                    image[tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunks, shape,
                                                                                     strict=True))]
                except Exception as exc:
                    return (f"chunk {list(index)} of {where} (chunk shape {list(chunks)}) is unreadable: "
                            f"{reason(exc)}; the input is corrupt or truncated there")
    text = ", ".join(f"{a}:{b}" for a, b in box)
    return f"reading [{text}] of {where} failed: {reason(error)}; the input is corrupt or truncated there"


def _array_name(image: Any) -> str:
    store = getattr(image, "store_path", None)  # zarr
    if store is not None:
        root = getattr(getattr(store, "store", None), "path", None)  # a store over HTTP(S): its URL
        where = f"{root}/{store.path}".rstrip("/") if isinstance(root, str) and "://" in root else str(store)
        return where.removeprefix("file://")
    file = getattr(image, "file", None)  # h5py
    if file is not None and hasattr(file, "filename"):
        return f"{file.filename}:{image.name}"
    return f"the input ({type(image).__name__})"


def reason(error: BaseException) -> str:
    """An exception as one line: its type and its message; for a request over HTTP(S) that the
    server refused, or that failed each time it was tried, what that means."""
    if server_failed(error) and refused(error):
        return (f"{failure(error)}: the server refused access; densepred reads over HTTP(S) without credentials, "
                "so the data must be public (or download it, or mount the bucket as a folder)")
    if server_failed(error):
        return (f"{failure(error)}, {RETRIES + 1} times: the server is busy or the connection is lost; try again "
                "later (a file run continues with --resume)")
    return one_line(error)
