"""N5 inputs: the chunked format of the Java imaging tools (BigDataViewer and BigStitcher,
Paintera, N5 Spark, the Janelia FIB-SEM pipelines).

N5 keeps zarr's idea (a folder per group, a file per block) with other metadata: a dataset's
``attributes.json`` lists ``dimensions`` and ``blockSize`` fastest axis first (x, y, z); a
block file ``X/Y/Z`` holds a header (mode, rank, the block's own size) and its values,
big-endian, x fastest, compressed as the dataset says. densepred, like z5py and zarr 2's N5
store, reverses the axes so an N5 volume is ``(z, y, x)``, with a channel axis (named ``c`` in
a neuroglancer ``axes`` attribute, else the last in the file) in front. zarr 3 reads no N5;
the blocks are read here as :mod:`.chunk_files` reads zarr chunks: each in the calling thread,
decoded by numcodecs, so a job's reader threads read at once and the memory is theirs.

Where a dataset lies in physical space is written several ways, each read here:

* ``transform`` (the CellMap/OpenOrganelle pipelines): ``axes``, ``scale``, ``translate`` and
  ``units`` of that level, in ``ordering`` ``C`` (z, y, x) or ``F``;
* ``pixelResolution`` (n5-viewer, N5 Spark: ``{"dimensions": [...], "unit": "um"}``) or
  ``resolution`` (neuroglancer, BigDataViewer, Paintera, with ``units``), x first, found on the
  dataset or the group above it, times the level's ``downsamplingFactors``; Paintera's
  ``offset`` (x first, physical units) moves it.

A spec names a dataset, ``volume.n5:raw`` or ``volume.n5:raw/s0``; a multiscale group
(``s0``, ``s1``, ...) stands for its full-resolution ``s0``.
"""

from __future__ import annotations

import json
import math
import operator
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DensePredError, listed
from .locations import Location, as_location
from .ome_zarr import Placement, checked_placement, in_zyx_order, space_unit, spatial_letters
from .reading import BlockArray, reason

MAX_GROUPS_LISTED = 1000  # folders visited to list the datasets of a container
CODECS = "raw, gzip, bzip2, xz, blosc, zstd or lz4"  # N5's compressions read here (numcodecs)
LZ4_MAGIC = b"LZ4Block"  # lz4-java's block stream, which N5's lz4 compression writes


def attributes(folder: Path | Location) -> dict[str, Any]:
    """A group's or dataset's attributes (an empty dict where it has none)."""
    try:
        data = json.loads(as_location(folder).read("attributes.json").decode("utf-8"))
    except FileNotFoundError:
        return {}
    except Exception as exc:  # damaged, or a server that does not answer as it should
        raise DensePredError(f"cannot read {folder}/attributes.json: {reason(exc)}") from None
    return data if isinstance(data, dict) else {}


def is_dataset(folder: Path | Location) -> bool:
    return "dimensions" in attributes(folder)


def remote_dataset(container: Location, key: str | None) -> Location:
    """The dataset a spec over HTTP(S) names: itself, or its ``s0`` where it is a multiscale
    group; a group cannot be listed there, so any other is one line asking for the dataset."""
    folder = container / key if key else container
    if is_dataset(folder):
        return folder
    if is_dataset(folder / "s0"):
        return folder / "s0"
    raise DensePredError(f"{container}{':' + key if key else ''} is no N5 dataset nor a multiscale group (with s0); "
                         f"over HTTP(S) a group cannot be listed: name the dataset, {container}:GROUP/DATASET")


def dataset_folder(container: Path, key: str | None) -> Path:
    """The folder of the dataset a spec names (``key``, else the container): itself, its ``s0``
    where it is a multiscale group, or the one dataset of a group that holds one."""
    folder = container / key if key else container
    inside = next((p for p in folder.parents if p.is_relative_to(container) and is_dataset(p)), None)
    if inside is not None:
        raise DensePredError(f"{container}:{key} is a folder of chunks inside the N5 dataset "
                             f"{container}:{inside.relative_to(container).as_posix()}; name the dataset")
    if not folder.is_dir():
        raise DensePredError(f"'{key}' not found in {container}; available: {listed(datasets(container))}")
    if is_dataset(folder):
        return folder
    if is_dataset(folder / "s0"):
        return folder / "s0"
    found = datasets(folder)
    if len(found) == 1:  # a dataset, or a multiscale group (Paintera's raw/data, one BigDataViewer setup)
        return folder / found[0] if is_dataset(folder / found[0]) else folder / found[0] / "s0"
    where = f"{container}:{key}" if key else str(container)
    raise DensePredError(f"{where} is an N5 group of {len(found)} datasets; name one as {container}:"
                         f"{key + '/' if key else ''}DATASET (available: {listed(found)})")


def datasets(folder: Path) -> list[str]:
    """The datasets below ``folder``, a multiscale group (``s0``, ``s1``, ...) counted as one;
    datasets are not entered (their sub-folders are chunks)."""
    found, queue, visited = [], [folder], 0
    while queue and visited < MAX_GROUPS_LISTED:
        group = queue.pop(0)
        visited += 1
        for child in sorted(p for p in group.iterdir() if p.is_dir()):
            if is_dataset(child) or is_dataset(child / "s0"):
                found.append(child.relative_to(folder).as_posix())
            else:
                queue.append(child)
    return found


class N5Array(BlockArray):
    """An N5 dataset as an array in C order (its stored axes reversed): ``shape``, ``dtype``,
    ``chunks`` and ``array[box]``, read block file by block file in the calling thread (as
    :mod:`.chunk_files` reads zarr arrays), so several threads read at once."""

    def __init__(self, folder: Path | Location):
        meta = attributes(folder)
        self.folder = as_location(folder)
        self.waits = self.folder.remote
        self.store_path = str(folder)  # how a read error names the input (io.reading)
        try:
            self.shape = tuple(operator.index(n) for n in reversed(meta["dimensions"]))  # whole numbers only
            self.chunks = tuple(operator.index(n) for n in reversed(meta["blockSize"]))
            if meta["dataType"] not in DATA_TYPES:
                raise ValueError(f"dataType {meta['dataType']!r} is not one of {', '.join(DATA_TYPES)}")
            self.dtype = np.dtype(meta["dataType"])
            compression = meta.get("compression", {"type": meta.get("compressionType", "raw")})
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise DensePredError(f"cannot open the N5 dataset {folder}: its attributes.json does not describe "
                                 f"an N5 dataset of numbers ({type(exc).__name__}: {exc})") from None
        self.codec = _codec(compression, folder)
        if len(self.chunks) != len(self.shape) or min(self.chunks, default=1) < 1 or min(self.shape, default=0) < 0:
            raise DensePredError(f"cannot open the N5 dataset {folder}: blockSize {meta['blockSize']} does not "
                                 f"fit dimensions {meta['dimensions']}")
        self.ndim = len(self.shape)

    def block(self, index: tuple[int, ...]) -> np.ndarray | None:
        """The block at grid ``index`` (z, y, x order), or None where it is not stored; its
        header (mode, rank, its own size x first) then its values, big-endian, x fastest."""
        try:
            raw = self.folder.read("/".join(map(str, reversed(index))))
        except FileNotFoundError:
            return None
        mode, rank = struct.unpack(">HH", raw[:4])
        if mode not in (0, 1) or rank != self.ndim:
            raise ValueError(f"block header says mode {mode}, {rank} dimensions; expected an array block of "
                             f"{self.ndim}")
        size = struct.unpack(f">{rank}I", raw[4:4 + 4 * rank])[::-1]
        expected = tuple(min(c, n - i * c) for i, c, n in zip(index, self.chunks, self.shape, strict=True))
        if any(s < e for s, e in zip(size, expected, strict=True)):  # a writer may store edge blocks whole
            raise ValueError(f"the block holds {list(size)} voxels, fewer than the {list(expected)} expected")
        start = 4 + 4 * rank + (4 if mode == 1 else 0)  # mode 1 (varlength) also counts its elements
        values = np.frombuffer(self.codec(raw[start:]), self.dtype.newbyteorder(">"), count=math.prod(size))
        return values.reshape(size)[tuple(slice(0, e) for e in expected)].astype(self.dtype, copy=False)


DATA_TYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64")


def _codec(compression: Any, folder: Path | Location) -> Any:
    """How a block's stored bytes decode, by the dataset's ``compression``."""
    import numcodecs

    kind = compression.get("type") if isinstance(compression, dict) else compression
    if kind == "raw":
        return bytes
    codecs = {"gzip": lambda: numcodecs.Zlib() if compression.get("useZlib") else numcodecs.GZip(),
              "bzip2": numcodecs.BZ2, "xz": numcodecs.LZMA, "blosc": numcodecs.Blosc, "zstd": numcodecs.Zstd,
              "lz4": lambda: LZ4Java}
    if kind not in codecs:
        raise DensePredError(f"cannot read the N5 dataset {folder}: its blocks are compressed with {kind!r}; densepred "
                             f"reads N5 blocks stored {CODECS} (rewrite it with one, e.g. with N5's own tools)")
    return codecs[kind]().decode
class LZ4Java:
    """lz4-java's ``LZ4BlockOutputStream`` framing, as N5's Java ``Lz4Compression`` writes
    blocks: frames of ``LZ4Block``, a token (0x10 stored, 0x20 LZ4, with the level), the stored
    and the original length and a checksum (little-endian), then the bytes; a frame of
    length 0 ends the stream. Each LZ4 frame is decoded by numcodecs' LZ4 (whose own framing
    is the original length before the bytes); the checksums are not verified."""

    @staticmethod
    def decode(data: bytes) -> bytes:
        import numcodecs

        out, at, lz4 = bytearray(), 0, numcodecs.LZ4()
        while at < len(data):
            if data[at:at + 8] != LZ4_MAGIC or len(data) < at + 21:
                raise ValueError(f"no lz4-java frame at byte {at} of the block")
            token = data[at + 8]
            stored, original = struct.unpack("<ii", data[at + 9:at + 17])
            body = data[at + 21:at + 21 + stored]
            if original == 0:
                break
            if len(body) != stored:
                raise ValueError(f"the lz4-java frame at byte {at} ends before its {stored} bytes")
            out += body if token & 0xF0 == 0x10 else lz4.decode(struct.pack("<I", original) + body)
            at += 21 + stored
        return bytes(out)


def n5_axes(folder: Path | Location) -> str | None:
    """The dataset's axes as letters (``C``, ``Z``, ``Y``, ``X``, ``T``) in densepred's order
    (the file's reversed), from a neuroglancer ``axes`` attribute; None where there is none."""
    from .axes import axis_letters

    names = attributes(folder).get("axes")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return axis_letters(list(reversed(names)))


def n5_placement(folder: Path | Location, spatial: int | None = None, read_order: bool = True) -> Placement | None:
    """Where the dataset's voxels lie (its last ``spatial`` axes in densepred's order: by
    default those its ``axes`` name z, y or x, else up to 3), from the attributes of the
    dataset and of the group above it, put in z, y, x order where ``axes`` order them
    otherwise (not with ``read_order=False``: the stored axes reversed); None where neither
    says."""
    axes = n5_axes(folder)
    stored = _stored_placement(folder, spatial, axes)
    return in_zyx_order(stored, spatial_letters(axes)) if read_order else stored


def _stored_placement(folder: Path | Location, spatial: int | None, axes: str | None) -> Placement | None:
    """:func:`n5_placement` in the order of the stored axes, reversed."""
    own, parent = attributes(folder), attributes(folder.parent)
    if spatial is None:
        spatial = sum(a in "ZYX" for a in axes) if axes else min(3, len(own.get("dimensions") or ()))
    try:
        if isinstance(own.get("transform"), dict):
            return _cellmap_transform(own["transform"], spatial)
        size, unit = _resolution(own, spatial) or _resolution(parent, spatial) or (None, None)
        if size is None:
            return None
        factors = _reversed_numbers(own.get("downsamplingFactors"), spatial) or (1.0,) * spatial
        offset = _reversed_numbers(own.get("offset") or parent.get("offset"), spatial) or (0.0,) * spatial
    except (TypeError, ValueError, KeyError, IndexError, AttributeError):
        return None
    voxel = tuple(s * f for s, f in zip(size, factors, strict=True))
    shift = tuple(o + (f - 1) / 2 * s for o, f, s in zip(offset, factors, size, strict=True))  # block centres
    return checked_placement(voxel, shift, unit)


def _resolution(attrs: dict[str, Any], spatial: int) -> tuple[tuple[float, ...], str | None] | None:
    pixel = attrs.get("pixelResolution")
    if isinstance(pixel, dict):
        return _reversed_numbers(pixel.get("dimensions"), spatial), space_unit([pixel.get("unit")])
    values = pixel if isinstance(pixel, list) else attrs.get("resolution")
    size = _reversed_numbers(values, spatial)
    return None if size is None else (size, space_unit(attrs.get("units")))


def _cellmap_transform(transform: dict[str, Any], spatial: int) -> Placement | None:
    order = 1 if transform.get("ordering", "C") == "C" else -1
    axes = [str(a).lower() for a in transform["axes"]][::order]
    keep = [i for i, a in enumerate(axes) if a in ("z", "y", "x")][-spatial:]
    if len(keep) != spatial:
        return None
    scale = [float(v) for v in transform["scale"]][::order]
    translate = [float(v) for v in transform.get("translate", [0.0] * len(axes))][::order]
    units = transform.get("units")
    return checked_placement(tuple(scale[i] for i in keep), tuple(translate[i] for i in keep),
                    space_unit([units[::order][i] for i in keep]) if isinstance(units, list) else None)


def _reversed_numbers(values: Any, count: int) -> tuple[float, ...] | None:
    """The last ``count`` of a list written x first, in z, y, x order."""
    if not isinstance(values, list) or len(values) < count:
        return None
    return tuple(float(v) for v in reversed(values[:count]))
