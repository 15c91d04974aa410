"""Neuroglancer precomputed volumes: the format of the large connectomics datasets (CloudVolume,
igneous, tensorstore and webknossos write it; neuroglancer shows it).

A volume is a folder with an ``info`` file (JSON) and one folder per scale. Each scale has its
``size``, ``resolution`` (nanometres) and ``voxel_offset``, x first, a chunk size, an encoding
of its chunks and, optionally, a sharding. densepred reads one scale, ``(C, z, y, x)`` (no C for
one channel), chunk by chunk in the calling thread:

* **unsharded**: a file per chunk, ``<x0>-<x1>_<y0>-<y1>_<z0>-<z1>`` in voxels from
  ``voxel_offset``; CloudVolume may store it compressed as ``<name>.gz`` (also ``.zstd``,
  ``.xz``, ``.bz2``, ``.br``), read as such;
* **sharded** (``neuroglancer_uint64_sharded_v1``): a chunk's id is the compressed Morton code of
  its grid position, hashed (identity or MurmurHash3_x86_128) to a shard file and a minishard,
  whose index lists where each chunk's bytes lie;
* **encodings**: ``raw`` (little-endian, x fastest, then channels), ``jpeg`` and ``png`` (one
  image whose rows, read in turn, are the chunk x fastest, channels interleaved). Segmentation
  encodings (``compressed_segmentation``, ``compresso``) are not image inputs and are refused.

A spec is the folder (``/data/em``, or neuroglancer's ``precomputed:///data/em``); a scale is
named by its key, ``/data/em:16_16_40``; without one, the first (finest) scale is read. A volume
on a web server or in a public bucket is read over HTTP(S) as neuroglancer names it,
``precomputed://https://storage.googleapis.com/BUCKET/PATH[:KEY]`` (:mod:`.locations`: whole
chunk files, and byte ranges of shard files).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DensePredError, listed
from .locations import Location, as_location
from .ome_zarr import Placement, checked_placement
from .reading import BlockArray, reason

PREFIX = "precomputed://"
DATA_TYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64")
ENCODINGS = ("raw", "jpeg", "png")
COMPRESSED_SUFFIXES = (".gz", ".zstd", ".xz", ".bz2", ".br")  # CloudVolume's names of compressed chunk files


def is_precomputed(folder: Path) -> bool:
    return folder.is_dir() and (folder / "info").is_file()


def read_info(folder: Path | str | Location) -> dict[str, Any]:
    folder = as_location(folder)
    try:
        info = json.loads(folder.read("info").decode("utf-8"))
    except Exception as exc:  # a missing or damaged file, or a server that does not answer as it should
        raise DensePredError(f"cannot read {folder / 'info'}: {reason(exc)}") from None
    if not isinstance(info, dict) or not isinstance(info.get("scales"), list) or not info["scales"]:
        raise DensePredError(f"{folder / 'info'} is not the info of a neuroglancer precomputed volume (it lists no "
                             "scales)")
    return info


def scale_of(info: dict[str, Any], folder: Any, key: str | None) -> dict[str, Any]:
    """The scale a spec's ``key`` names (the first, finest, where it names none)."""
    scales = [s for s in info["scales"] if isinstance(s, dict)]
    if key is None and scales:
        return scales[0]
    found = next((s for s in scales if str(s.get("key", "")).strip("/") == key), None)
    if found is None:
        keys = [str(s.get("key")) for s in scales]
        raise DensePredError(f"scale '{key}' not found in the precomputed volume {folder}; available: {listed(keys)}")
    return found


@dataclass(frozen=True)
class Scale:
    """One scale of a volume as its ``info`` describes it, x first."""

    key: str
    size: tuple[int, ...]
    offset: tuple[int, ...]  # voxel_offset
    chunk: tuple[int, ...]
    channels: int
    encoding: str
    dtype: np.dtype
    sharding: Any


def read_scale(folder: Path | str | Location, key: str | None) -> Scale:
    """The scale ``key`` names (the first where None), checked; else one line saying why not."""
    info = read_info(folder)
    scale = scale_of(info, folder, key)
    try:
        found = Scale(str(scale.get("key", "")).strip("/"), tuple(int(n) for n in scale["size"]),
                      tuple(int(n) for n in scale.get("voxel_offset") or (0, 0, 0)),
                      tuple(int(n) for n in scale["chunk_sizes"][0]), int(info.get("num_channels", 1)),
                      str(scale.get("encoding", "raw")).lower(), np.dtype(_data_type(info)), scale.get("sharding"))
        if not all(len(v) == 3 for v in (found.size, found.offset, found.chunk)) or \
                min(*found.chunk, *found.size, found.channels) < 1:
            raise ValueError("size, voxel_offset and chunk_sizes need 3 values each (x, y, z), sizes from 1")
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
        raise DensePredError(f"cannot open the precomputed volume {folder}: its info does not describe a scale "
                             f"of numbers ({type(exc).__name__}: {exc})") from None
    if found.encoding not in ENCODINGS:
        raise DensePredError(f"cannot read {folder}:{found.key}: its chunks are encoded {found.encoding!r}; "
                             f"densepred reads the image encodings {', '.join(ENCODINGS)} (a segmentation is no input)")
    return found


def _data_type(info: dict[str, Any]) -> str:
    name = str(info["data_type"]).lower()
    if name not in DATA_TYPES:
        raise ValueError(f"data_type {name!r} is not one of {', '.join(DATA_TYPES)}")
    return name


class PrecomputedArray(BlockArray):
    """One scale of a precomputed volume as ``(C, z, y, x)``, or ``(z, y, x)`` for one channel."""

    def __init__(self, folder: Path | str | Location, key: str | None):
        folder = as_location(folder)
        scale = read_scale(folder, key)
        self.folder = folder / scale.key
        self.waits = self.folder.remote
        self.store_path = f"{folder}:{scale.key}"  # how a read error names the input (io.reading)
        self.size, self.offset, self.chunk = scale.size, scale.offset, scale.chunk
        self.channels, self.encoding, self.dtype = scale.channels, scale.encoding, scale.dtype
        lead = (self.channels,) if self.channels > 1 else ()
        self.shape = (*lead, *reversed(self.size))
        self.chunks = (*lead, *reversed(self.chunk))
        self.ndim = len(self.shape)
        self.sharding = Shards(self.folder, scale.sharding, self.grid) if scale.sharding else None
        self.suffixes = ("", *COMPRESSED_SUFFIXES)  # the names a chunk's file is looked for under
        self._naming, self._named = threading.Lock(), threading.Event()

    @property
    def grid(self) -> tuple[int, ...]:
        """Chunks per axis, x first."""
        return tuple(-(-n // c) for n, c in zip(self.size, self.chunk, strict=True))

    def block(self, index: tuple[int, ...]) -> np.ndarray | None:
        cell = tuple(reversed(index[-3:]))  # x, y, z
        extent = tuple(min(c, n - i * c) for i, c, n in zip(cell, self.chunk, self.size, strict=True))
        raw = self.sharding.read(cell) if self.sharding else self._chunk_file(cell, extent)
        if raw is None:
            return None
        values = self._decode(raw, extent)
        return values if self.channels > 1 else values[0]

    def _chunk_file(self, cell: tuple[int, ...], extent: tuple[int, ...]) -> bytes | None:
        begin = [o + i * c for o, i, c in zip(self.offset, cell, self.chunk, strict=True)]
        name = "_".join(f"{b}-{b + e}" for b, e in zip(begin, extent, strict=True))
        if not self.waits or self._named.is_set():
            return self._look_up(name)
        with self._naming:  # over HTTP, until a chunk is found one at a time: the first found names the rest
            if not self._named.is_set():
                return self._look_up(name)
        return self._look_up(name)

    def _look_up(self, name: str) -> bytes | None:
        for suffix in self.suffixes:
            try:
                data = self.folder.read(name + suffix)
            except FileNotFoundError:
                continue
            if self.waits and not self._named.is_set():  # served as neuroglancer reads it (a bare name): a bare
                rest = tuple(s for s in self.suffixes if s != suffix)  # name not there is a chunk never written
                self.suffixes = ("",) if suffix == "" else (suffix, *rest)  # (one request, not one per suffix)
                self._named.set()
            return decompress(data, suffix)
        return None

    def _decode(self, raw: bytes, extent: tuple[int, ...]) -> np.ndarray:
        """A chunk's values as ``(C, z, y, x)``."""
        voxels = math.prod(extent)
        if self.encoding == "raw":
            expected = voxels * self.channels * self.dtype.itemsize
            if len(raw) != expected and raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)  # served with its gzip encoding kept
            if len(raw) != expected:
                raise ValueError(f"the chunk holds {len(raw)} bytes; {list(extent)} voxels (x, y, z) of "
                                 f"{self.channels} channel(s) of {self.dtype} are {expected}")
            values = np.frombuffer(raw, self.dtype.newbyteorder("<"), count=voxels * self.channels)
            return values.reshape(self.channels, *reversed(extent)).astype(self.dtype, copy=False)
        import imagecodecs

        image = np.asarray(imagecodecs.imread(raw, codec=self.encoding))
        if image.size != voxels * self.channels:
            raise ValueError(f"the {self.encoding} image holds {image.size} values; the chunk has "
                             f"{voxels * self.channels}")
        values = image.reshape(*reversed(extent), self.channels)  # rows in turn: x fastest, channels interleaved
        return np.moveaxis(values, -1, 0).astype(self.dtype, copy=False)


def decompress(data: bytes, suffix: str) -> bytes:
    """A chunk file's bytes, decompressed as its suffix says."""
    if suffix == ".gz":
        return gzip.decompress(data)
    if suffix == ".xz":
        return lzma.decompress(data)
    if suffix == ".bz2":
        return bz2.decompress(data)
    if suffix == ".zstd":
        import numcodecs

        return bytes(numcodecs.Zstd().decode(data))
    if suffix == ".br":
        try:
            import brotli  # type: ignore[import-not-found]
        except ImportError:
            raise DensePredError("a chunk of this precomputed volume is Brotli-compressed (.br); install brotli "
                                 "(pip install brotli) or store it with gzip") from None
        return bytes(brotli.decompress(data))
    return data


class Shards:
    """The chunks of a sharded scale (``neuroglancer_uint64_sharded_v1``): each chunk's bytes
    found through its shard's index and minishard index (kept once read; they are small)."""

    def __init__(self, folder: Location, spec: Any, grid: tuple[int, ...]):
        try:
            if spec.get("@type") != "neuroglancer_uint64_sharded_v1":
                raise ValueError(f"@type {spec.get('@type')!r}")
            self.preshift, self.minishard_bits, self.shard_bits = (int(spec[k]) for k in (
                "preshift_bits", "minishard_bits", "shard_bits"))
            if not (0 <= self.preshift < 64 and 0 <= self.minishard_bits <= 32 and 0 <= self.shard_bits <= 32):
                raise ValueError("preshift_bits from 0 to 63, minishard_bits and shard_bits from 0 to 32")
            self.hash = spec.get("hash", "identity")
            if self.hash not in ("identity", "murmurhash3_x86_128"):
                raise ValueError(f"hash {self.hash!r}")
            self.index_gzip = _gzip_encoding(spec.get("minishard_index_encoding", "raw"))
            self.data_gzip = _gzip_encoding(spec.get("data_encoding", "raw"))
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as exc:
            raise DensePredError(f"cannot read the sharded precomputed scale {folder}: its sharding is not one "
                                 f"densepred reads ({type(exc).__name__}: {exc}; expected "
                                 "neuroglancer_uint64_sharded_v1, identity or murmurhash3_x86_128)") from None
        self.folder, self.grid = folder, grid
        self._minishards: dict[tuple[int, int], dict[int, tuple[int, int]]] = {}
        self._lock = threading.Lock()

    def read(self, cell: tuple[int, ...]) -> bytes | None:
        """The stored bytes of the chunk at grid position ``cell`` (x, y, z), or None."""
        chunk_id = compressed_morton_code(cell, self.grid)
        hashed = self._hash(chunk_id >> self.preshift)
        minishard = hashed & ((1 << self.minishard_bits) - 1)
        shard = (hashed >> self.minishard_bits) & ((1 << self.shard_bits) - 1)
        name = f"{shard:0{-(-self.shard_bits // 4)}x}.shard"
        try:
            where = self._minishard(name, shard, minishard).get(chunk_id)
            if where is None:
                return None
            data = self.folder.read(name, where[0], where[0] + where[1])
        except FileNotFoundError:
            return None
        if len(data) != where[1]:
            raise ValueError(f"{name} ends before the chunk's {where[1]} bytes at {where[0]}")
        return gzip.decompress(data) if self.data_gzip else data

    def _hash(self, value: int) -> int:
        if self.hash == "identity":
            return value
        import mmh3

        return int.from_bytes(mmh3.hash_bytes(value.to_bytes(8, "little"), 0, x64arch=False)[:8], "little")

    def _minishard(self, name: str, shard: int, minishard: int) -> dict[int, tuple[int, int]]:
        """Chunk id -> (offset, size) in the shard file ``name``, for one minishard."""
        with self._lock:
            found = self._minishards.get((shard, minishard))
        if found is not None:
            return found
        index_end = 16 << self.minishard_bits
        start, end = np.frombuffer(self.folder.read(name, 16 * minishard, 16 * minishard + 16), "<u8").tolist()
        found = {}
        if end > start:
            data = self.folder.read(name, index_end + start, index_end + end)
            data = gzip.decompress(data) if self.index_gzip else data
            table = np.frombuffer(data, "<u8").reshape(3, -1).astype(np.uint64)
            ids = np.cumsum(table[0], dtype=np.uint64)
            sizes = table[2]
            starts = index_end + np.cumsum(table[1], dtype=np.uint64) + np.concatenate(
                [[0], np.cumsum(sizes, dtype=np.uint64)[:-1]]).astype(np.uint64)
            found = {int(i): (int(s), int(n)) for i, s, n in zip(ids, starts, sizes, strict=True)}
        with self._lock:
            self._minishards[(shard, minishard)] = found
        return found


def _gzip_encoding(name: Any) -> bool:
    if name not in ("raw", "gzip"):
        raise ValueError(f"encoding {name!r}")
    return name == "gzip"


def compressed_morton_code(cell: tuple[int, ...], grid: tuple[int, ...]) -> int:
    """The compressed Morton code of grid position ``cell`` (x, y, z) in a grid of ``grid``
    chunks: the bits of x, y, z interleaved from the lowest, leaving out those no position
    of the grid sets.

        >>> compressed_morton_code((1, 0, 1), (2, 1, 2)), compressed_morton_code((3, 1, 0), (4, 2, 1))
        (3, 7)
    """
    code, bit = 0, 0
    for i in range(max(n.bit_length() for n in grid)):
        for value, size in zip(cell, grid, strict=True):
            if (1 << i) < size:
                code |= ((value >> i) & 1) << bit
                bit += 1
    return code


def precomputed_placement(folder: Path | str | Location, key: str | None) -> Placement | None:
    """Where a scale's voxels lie: its ``resolution`` (nanometres) and ``voxel_offset``, with
    the centre of voxel 0 of the finest scale at ``voxel_offset * resolution`` (a coarser
    voxel's centre is that of the finer voxels it covers)."""
    try:
        info = read_info(folder)
        scale, finest = scale_of(info, folder, key), info["scales"][0]
        size = [float(v) for v in scale["resolution"]]
        fine = [float(v) for v in finest["resolution"]]
        offset = [float(v) for v in scale.get("voxel_offset") or (0, 0, 0)]
        shift = [o * s + (s - f) / 2 for o, s, f in zip(offset, size, fine, strict=True)]
    except (DensePredError, KeyError, TypeError, ValueError, IndexError, OverflowError):
        return None
    return checked_placement(size[::-1], shift[::-1], "nanometer")
