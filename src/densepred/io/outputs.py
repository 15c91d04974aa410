"""Output arrays that prediction streams into, one tile at a time.

The same specs as for input (see :mod:`densepred.arrays`):

* ``out.zarr`` - an OME-Zarr 0.5 image: a zarr v3 group with multiscales metadata and the
  array ``0`` in it, chunked like the output tiles (napari and neuroglancer open it).
  ``out.zarr:name`` puts that image group at ``name`` inside the store.
* ``out.h5:dataset`` - an HDF5 dataset in chunks that divide the tiles (about 64 a side),
  gzip-compressed by the writers (:mod:`.hdf5_chunks`).
* ``out.tif`` - an uncompressed TIFF (BigTIFF when large), written through a memory map.
* ``out.mrc`` - an MRC2014 file (``.rec``, ``.map`` too) for cryo-ET software, written
  through a memory map (:mod:`.mrc_output`).
* ``out.npy`` - a NumPy file, written through a memory map.

Each tile is written into its own box (a whole chunk for zarr and HDF5) and flushed before
the tile is recorded as done. Shards of densepred's OME-Zarr outputs are encoded in the
writing thread (:mod:`.shard_files`, zarr's own bytes); other writes go through zarr.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DensePredError
from ..files import fsync_folder
from .arrays import ArraySpec
from .chunk_files import array_folder
from .hdf5_chunks import DirectChunks
from .local_zarr import LocalZarr
from .ome_zarr import OmeLayout, Placement, create_levels, ome_attributes
from .reading import reason

OUTPUT_DTYPES = ("float32", "float16", "uint8")
WRITABLE = "out.zarr[:group], out.h5:dataset, out.tif, out.mrc or out.npy"


class OutputArray:
    """An array being written: ``array[box] = data``, ``flush()``, ``attrs``, ``close()``."""

    def __init__(self, spec: ArraySpec, array: Any, handle: Any = None, group: Any = None,
                 levels: Sequence[Any] = ()):
        self.spec, self.array, self._handle, self._group = spec, array, handle, group
        self.levels = list(levels) or [array]  # pyramid levels of an OME-Zarr output, level 0 first
        self._local = LocalZarr(array) if spec.kind == "zarr" else None  # by its files where it can
        self._direct = DirectChunks.of(array) if spec.kind == "hdf5" else None  # compressed by the writers
        self._levels: dict[int, OutputArray] = {0: self}
        self._deferred = False  # a memory map synced by what defer_syncs returns, not by each write_box
        # called with (spatial box, values) after each write_box, from the writing thread
        self.after_write: Callable[[tuple[slice, ...], np.ndarray], None] | None = None

    def level(self, index: int) -> OutputArray:
        """The output's pyramid level ``index`` (level 0 is the output itself)."""
        if index not in self._levels:
            self._levels[index] = OutputArray(self.spec, self.levels[index], group=self._group, levels=self.levels)
        return self._levels[index]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        try:
            if self._local is not None:
                self._local[key] = value
            elif self._direct is not None and isinstance(key, tuple) and self._direct.write(key, value):
                return
            else:
                self.array[key] = value
        except (RuntimeError, ValueError) as exc:
            if self._local is None:
                raise
            # zarr merges values written into part of a shard with the shard as stored, which it decodes first
            raise DensePredError(f"writing {self.spec} failed: a shard it adds to cannot be decoded ({reason(exc)}); "
                                 "the output is damaged; start again with --overwrite") from None

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.array[key]) if self._local is None else self._local[key]

    def block_length(self, axis: int) -> int | None:
        """The length along ``axis`` of the blocks the output is stored in (a zarr shard, an HDF5
        chunk), which a write of part of one decodes and encodes again; None for a memory map."""
        blocks = self._blocks()
        return int(blocks[axis]) if blocks is not None else None

    def write_unit(self, ndim: int) -> tuple[int, ...] | None:
        """The spatial shape of the units the output is stored in, which two threads must not
        write at once (zarr shards, HDF5 chunks); None for a memory map, whose writes are plain
        copies and whose ``msync`` covers the whole map."""
        blocks = self._blocks()
        return tuple(int(b) for b in blocks[-ndim:]) if blocks is not None else None

    def _blocks(self) -> tuple[int, ...] | None:
        if self.spec.kind == "zarr":
            return self.array.shards or self.array.chunks
        return self.array.chunks if self.spec.kind == "hdf5" else None

    def flush(self) -> None:
        """Hand written tiles to the operating system (they survive a crash of this process)."""
        if self._handle is not None:  # HDF5
            self._handle.flush()
        elif isinstance(self.array, np.memmap):
            self.array.flush()

    def sync(self, box: tuple[slice, ...]) -> None:
        """Make the data written in ``box`` durable on disk (it survives a power loss).

        HDF5: the file is flushed and fsynced; memory maps: ``msync`` (none after
        :meth:`defer_syncs`); zarr: every chunk file the box touches, and their folders, are
        fsynced.
        """
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.id.get_vfd_handle())
        elif isinstance(self.array, np.memmap):
            if not self._deferred:
                self.array.flush()  # msync(MS_SYNC)
        elif self.spec.kind == "zarr":
            paths = self._chunk_files(box)
            for path in paths:
                _fsync_file(path)
            for folder in {path.parent for path in paths}:
                fsync_folder(folder)

    def defer_syncs(self) -> Callable[[], None] | None:
        """For a memory map: leave its ``msync`` to the function returned, which makes every
        write so far durable (:class:`~.run_record.DoneLog` calls it once for a group of tiles);
        None, and nothing changed, for other outputs."""
        if not isinstance(self.array, np.memmap):
            return None
        self._deferred = True
        return self.array.flush

    def write_box(self, box: tuple[slice, ...], values: np.ndarray, labels: bool) -> None:
        """Write ``values`` over the spatial ``box`` (every channel, unless the output holds
        labels without a channel axis) and make them durable."""
        key = box if labels else (slice(None), *box)
        self[key] = values
        self.sync(key)
        if self.after_write is not None:
            self.after_write(box, values)

    def _chunk_files(self, box: tuple[slice, ...]) -> list[Path]:
        array = self.array
        grid = self._local.grid
        ranges = []
        for s, n, c in zip(box, array.shape, grid, strict=False):
            start, stop, _ = s.indices(n)
            ranges.append(range(start // c, (max(stop, start + 1) - 1) // c + 1))
        folder = array_folder(array)
        return [folder / array.metadata.encode_chunk_key(coords) for coords in itertools.product(*ranges)]

    def set_attributes(self, values: dict[str, Any]) -> None:
        """Store metadata where the format has room for it (zarr and HDF5)."""
        if self.spec.kind == "zarr":
            target = self._group if self._group is not None else self.array
            target.update_attributes(values)
        elif self.spec.kind == "hdf5":
            import json

            for key, value in values.items():
                self.array.attrs[key] = json.dumps(value)

    def close(self) -> None:
        self.flush()
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if isinstance(self.array, np.memmap):
            mm = getattr(self.array, "_mmap", None)
            if mm is not None:
                mm.close()


def create_output(spec: ArraySpec, shape: Sequence[int], dtype: Any, chunks: Sequence[int],
                  attributes: dict[str, Any] | None = None, layout: OmeLayout | None = None,
                  channel_axis: bool = True, placement: Placement | None = None) -> OutputArray:
    """A new output array of ``shape``; ``chunks`` (blocks of the output tile) lay out HDF5, ``layout``
    the levels, shards and metadata of an OME-Zarr output (required for zarr);
    ``channel_axis``: whether the first axis holds classes (not for argmax labels), for the
    axes a TIFF names.

    ``attributes`` (zarr and HDF5) are stored as the output comes into being, before any
    data, so an output is never seen without them (they mark what densepred wrote). An HDF5
    output holds its ``placement`` as CREMI's and funlib's ``resolution``, ``offset`` and
    ``units`` (spatial axes, z first), a TIFF output as an ImageJ calibration
    (:mod:`.tiff_output`); densepred and those tools read them back.
    """
    shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
    chunks = tuple(int(c) for c in chunks)
    attributes = attributes or {}
    try:
        if spec.kind == "zarr":
            assert layout is not None, "a zarr output needs its OME-Zarr layout"
            return _create_zarr(spec, dtype, layout, attributes)
        if spec.kind == "hdf5":
            return _create_hdf5(spec, shape, dtype, chunks, attributes, placement)
        if spec.kind == "tiff":
            from .tiff_output import create_tiff

            array = create_tiff(spec.path, shape, dtype, channel_axis, placement)
            _reserve(spec.path)
            return OutputArray(spec, array)
        if spec.kind == "mrc":
            from .mrc_output import create_mrc

            array = create_mrc(spec.path, shape, dtype, channel_axis, placement)
            _reserve(spec.path)
            return OutputArray(spec, array)
        if spec.kind == "npy":
            array = np.lib.format.open_memmap(spec.path, mode="w+", dtype=dtype, shape=shape)
            _reserve(spec.path)
            return OutputArray(spec, array)
    except OSError as exc:
        raise DensePredError(f"cannot create {spec}: {exc.strerror or exc}") from None
    raise DensePredError(f"cannot write '{spec.path}'; expected an output like {WRITABLE}")


def _fsync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # a chunk zarr did not store (all fill value)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reserve(path: Path) -> None:
    """Allocate a memory-mapped file's blocks now: a full disk is an error here, not a crash
    (SIGBUS) in the middle of writing a tile."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                f.close()
                path.unlink()
                raise
            # the file system cannot preallocate (EOPNOTSUPP): write it as a sparse file


def open_output(spec: ArraySpec, clean: bool = True, shape: Sequence[int] | None = None) -> OutputArray:
    """An existing output, opened for writing the tiles that are still missing.

    ``clean`` deletes the leftovers of zarr chunk writes a crash cut short; a cluster worker
    opens the output with ``clean=False``, since other workers' writes are in flight.
    ``shape``: the output's shape as its run record gives it (an MRC file of one class holds
    no channel axis).
    """
    try:
        if spec.kind == "zarr":
            import zarr

            folder = spec.path / spec.key if spec.key else spec.path
            if clean:
                remove_partial_writes(folder)
            group = zarr.open_group(folder, mode="r+")
            datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
            levels = [_for_writing(group[d["path"]]) for d in datasets]
            return OutputArray(spec, levels[0], group=group, levels=levels)
        if spec.kind == "hdf5":
            import h5py

            handle = h5py.File(spec.path, "r+")
            return OutputArray(spec, handle[h5_key(spec)], handle=handle)
        if spec.kind == "tiff":
            from .tiff_output import open_tiff

            return OutputArray(spec, open_tiff(spec.path))
        if spec.kind == "mrc":
            from .mrc_output import open_mrc_output

            return OutputArray(spec, open_mrc_output(spec.path, shape))
        return OutputArray(spec, np.load(spec.path, mmap_mode="r+", allow_pickle=False))
    except (DensePredError, MemoryError):
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise DensePredError(f"cannot reopen {spec} to resume: {exc}; start again with --overwrite") from None
    except Exception as exc:  # a damaged file: its reader fails in its own way
        raise DensePredError(f"cannot reopen {spec} to resume: {reason(exc)}; it is damaged; start again with "
                             "--overwrite") from None


def check_levels(output: OutputArray, layout: OmeLayout, dtype: Any) -> None:
    """Raise unless a reopened OME-Zarr output's levels have the metadata this run would create
    (a damaged ``zarr.json`` can open, then fail at the first write or read of a shard)."""
    import zarr
    from zarr.storage import MemoryStore

    expected = create_levels(zarr.open_group(MemoryStore(), mode="w", zarr_format=3), layout, np.dtype(dtype))
    found = output.levels
    if len(found) != len(expected):
        raise DensePredError(f"{output.spec} has {len(found)} levels, not the {len(expected)} its run record says; "
                             "start again with --overwrite")
    for index, (level, new) in enumerate(zip(found, expected, strict=True)):
        stored = _metadata(level)
        differs = sorted(k for k, v in _metadata(new).items() if stored.get(k) != v)
        if differs:
            raise DensePredError(f"{output.spec}: level {index}'s zarr metadata ({', '.join(differs)}) is not what "
                                 "this run writes; it is damaged; start again with --overwrite")


def _metadata(array: Any) -> dict[str, Any]:
    return {k: v for k, v in array.metadata.to_dict().items() if k != "attributes"}


def remove_partial_writes(folder: Path) -> int:
    """Delete the temporary files of chunk writes a crash cut short.

    zarr's local store (and :mod:`.shard_files`) writes each chunk to ``<chunk>.<random>.partial``
    and renames it into place, so a killed process can leave one behind; the chunk itself is
    rewritten on resume.
    """
    stray = list(folder.rglob("*.partial"))
    for path in stray:
        path.unlink(missing_ok=True)
    return len(stray)


def _create_zarr(spec: ArraySpec, dtype: np.dtype, layout: OmeLayout, attributes: dict[str, Any]) -> OutputArray:
    import zarr

    # densepred's mark is in the group's first metadata, so an output cut short is still known as ours
    if spec.key:
        group = zarr.open_group(spec.path, mode="a", zarr_format=3).create_group(spec.key, attributes=attributes)
    else:
        group = zarr.open_group(spec.path, mode="a", zarr_format=3, attributes=attributes)
    arrays = [_for_writing(array) for array in create_levels(group, layout, dtype)]
    # the image's metadata last: a process killed in between leaves no multiscales naming arrays that do not exist
    group.update_attributes({"ome": ome_attributes(layout)})
    return OutputArray(spec, arrays[0], group=group, levels=arrays)


def _for_writing(array: Any) -> Any:
    """A zarr array that stores every chunk written, also one that is all fill value: zarr's
    default compares each chunk with the fill value first, which cost a third of a shard's
    write time (uint8, 64^3 chunks), and a prediction is rarely all zero."""
    return array.with_config({"write_empty_chunks": True})


def _create_hdf5(spec: ArraySpec, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...],
                 attributes: dict[str, Any], placement: Placement | None) -> OutputArray:
    import h5py

    handle = h5py.File(spec.path, "a")
    try:
        array = handle.create_dataset(h5_key(spec), shape=shape, dtype=dtype,
                                      chunks=h5_chunk_shape(chunks, shape, dtype),
                                      compression="gzip", compression_opts=1, shuffle=True, fillvalue=0)
        if placement is not None:
            array.attrs["resolution"] = np.asarray(placement.voxel_size, np.float64)
            array.attrs["offset"] = np.asarray(placement.translation, np.float64)
            if placement.unit is not None:
                array.attrs["units"] = [placement.unit] * len(placement.voxel_size)
        output = OutputArray(spec, array, handle=handle)
        output.set_attributes(attributes)
    except (ValueError, RuntimeError) as exc:  # the file's own structures damaged (its heap, a B-tree)
        handle.close()
        raise DensePredError(f"cannot create {spec}: {reason(exc)}; the HDF5 file {spec.path} is damaged; write "
                             "to another file") from None
    except BaseException:
        handle.close()
        raise
    return output


def h5_chunk_shape(chunks: tuple[int, ...], shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    """``chunks`` (blocks that divide the output tile, as the job chooses them) no larger than
    the dataset (HDF5 refuses that; a model's shard may be larger than its cropped output),
    halved along the longest axis until under HDF5's 4 GiB limit."""
    chunks = [min(c, s) for c, s in zip(chunks, shape, strict=True)]
    while int(np.prod(chunks)) * dtype.itemsize >= 2**32 - 1:
        axis = int(np.argmax(chunks))
        chunks[axis] = (chunks[axis] + 1) // 2
    return tuple(chunks)


def h5_key(spec: ArraySpec) -> str:
    return spec.key or "prediction"
