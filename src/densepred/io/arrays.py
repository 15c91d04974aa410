"""Array specs: where an image or label volume lives on disk, opened for reading on demand.

A spec is one string:

* ``file.h5:dataset`` (or ``.hdf5``) - an HDF5 dataset (h5py)
* ``file.zarr`` or ``file.zarr:group/array`` - a zarr array (v2 or v3); a group that is an
  OME-Zarr image stands for its full-resolution array. A folder without the suffix is a zarr
  store when it holds zarr metadata (``data/raw``: the array ``raw`` of the group ``data``)
* ``file.n5:group/dataset`` - an N5 dataset (read only; a multiscale group stands for ``s0``)
* ``folder`` or ``precomputed://folder``, ``folder:SCALE`` - a neuroglancer precomputed volume
  (a folder with an ``info`` file; read only; the first scale unless one is named)
* ``file.tif`` / ``file.tiff`` - a TIFF stack (memory-mapped when the file allows)
* ``folder`` or ``folder/z*.tif`` - a folder of 2D TIFF files, one per section, in natural
  order (read only; :mod:`.tiff_sections`)
* ``file.mrc`` (``.rec``, ``.map``, ``.st``, ``.ali``, ``.mrcs``) - a cryo-EM tomogram, map or
  stack (memory-mapped; :mod:`.mrc`; written by :mod:`.mrc_output`)
* ``file.ims`` - an Imaris file, its full resolution (read only; :mod:`.imaris`)
* ``file.npy`` - a NumPy array (memory-mapped)
* ``file.csv`` - a numeric table (features or labels; read whole)
* ``https://host/path/file.zarr[:path]`` - a zarr store over HTTP(S) (read only; zarr's fsspec
  store): a web server's, or a public S3 or Google Cloud bucket's (``s3://BUCKET/...``,
  ``gs://BUCKET/...`` or their HTTPS address); also an N5 dataset (``https://host/c.n5:em/s0``)
  and a precomputed volume (``precomputed://gs://...``); neuroglancer's ``zarr://`` and ``n5://``
  before a URL are taken as it writes them

A path that goes on inside a zarr store, an N5 container or an HDF5 file is its ``:`` form:
``em.zarr/recon-1/em/s0`` is ``em.zarr:recon-1/em/s0`` (OME-Zarr's and N5's paths, ilastik's
``stack.h5/exported_data``).

An input that is a time series of volumes (axes ``t, c, z, y, x`` with several time points)
is one volume per time point: ``movie.zarr@t=3`` names the fourth (``@t=N`` after any of the
forms above), so each time point is its own run, e.g. one task of a batch system's job array.

Relative paths are resolved against ``base`` (the config file's folder), never against a
changed working directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ..errors import DensePredError
from .axes import channel_first
from .locations import public_url, server_failed
from .mrc import SUFFIXES as MRC_SUFFIXES
from .ome_zarr import Placement
from .precomputed import PREFIX as PRECOMPUTED
from .precomputed import is_precomputed
from .reading import reason
from .spec_paths import CONTAINERS, HDF5_SUFFIXES, check_key, inner_path, resolve, stored_kind, zarr_root
from .tiff_sections import is_pattern, open_sections, section_files

SUPPORTED = ("file.h5:dataset, file.zarr[:path], file.n5[:dataset], a precomputed folder[:scale], file.tif, "
             "a folder of .tif sections, file.mrc, file.ims, file.npy, file.csv or https://host/file.zarr[:path]")
SUFFIX_KINDS = {**dict.fromkeys(HDF5_SUFFIXES, "hdf5"), ".zarr": "zarr", ".n5": "n5", ".tif": "tiff", ".tiff": "tiff",
                ".npy": "npy", ".csv": "csv", ".ims": "imaris", **dict.fromkeys(MRC_SUFFIXES, "mrc")}
REMOTE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)  # a URL (precomputed:// and file:// are paths)
SOURCE = re.compile(r"^(zarr[23]?|n5)://", re.IGNORECASE)  # neuroglancer's data source prefixes; the path says which
TIME_POINT = re.compile(r"@t=(\d+)$")  # a spec's time point: movie.zarr:0@t=3


def spec_text(spec: Any) -> str:
    """A spec as text: a ``pathlib.Path`` as its path; one line for anything that names no file."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec or "\x00" in spec:
        what = repr(spec) if isinstance(spec, str | bytes) else f"of type {type(spec).__name__}"
        hint = "; an array in memory is predicted by densepred.predict_dense" if hasattr(spec, "shape") else ""
        raise DensePredError(f"array spec {what} is invalid; expected {SUPPORTED}{hint}")
    return spec


@dataclass(frozen=True)
class ArraySpec:
    path: Path
    key: str | None  # dataset inside an HDF5 file or zarr group
    time: int | None = None  # one time point of a time series (``@t=N``)
    url: str | None = None  # read over HTTP(S) (then ``path`` is the URL as a path: its suffix)
    precomputed: bool = False  # a URL of a neuroglancer precomputed volume (``precomputed://https://...``)
    source: str | None = None  # "zarr" or "n5": a URL whose path names no suffix, given as neuroglancer's zarr:// or n5://

    @classmethod
    def parse(cls, spec: str | os.PathLike, base: Path | None = None) -> ArraySpec:
        spec = spec_text(spec)
        time = TIME_POINT.search(spec)
        bad = None if time else re.search(r"@t=([^/:@]*)$", spec)
        if bad:
            raise DensePredError(f"array spec {spec!r} names the time point {bad.group(1)!r}; a time point is a "
                                 f"whole number from 0, e.g. {spec[:bad.start()]}@t=0")
        text = spec[:time.start()] if time else spec
        behind = text[len(PRECOMPUTED):] if text.lower().startswith(PRECOMPUTED) else text  # neuroglancer's prefix
        source = SOURCE.match(behind)
        if source and REMOTE.match(behind[source.end():]):  # zarr://s3://..., n5://https://...
            behind = text = behind[source.end():]
        remote = REMOTE.match(behind) and not behind.lower().startswith("file://")
        form = source.group(1).lower().rstrip("23") if source else None
        parsed = remote_spec(behind, spec, behind is not text, form) if remote else cls._parse(text, spec, base)
        return dataclasses.replace(parsed, time=int(time.group(1))) if time else parsed

    @classmethod
    def output(cls, spec: str | os.PathLike, base: Path | None = None) -> ArraySpec:
        """An output's spec: a whole array, never a time point."""
        spec = spec_text(spec)
        parsed = cls.parse(spec, base)
        if parsed.url is not None:
            raise DensePredError(f"output {spec!r} is a URL; densepred reads zarr stores over HTTP(S) but writes to "
                                 "a file system (a local disk, or a network or cloud bucket mounted as one)")
        if parsed.time is not None:
            raise DensePredError(f"output {spec!r} names a time point; @t=N selects a time point of an input, an "
                                 f"output is a whole array (e.g. {parsed.array_text})")
        if parsed.sections:
            raise DensePredError(f"output {spec!r} is a folder of TIFF sections, which densepred reads but does not "
                                 "write; write one TIFF stack (out.tif) or OME-Zarr (out.zarr)")
        if parsed.path.suffix.lower() == ".ims":
            raise DensePredError(f"output {spec!r} is an Imaris file, which densepred reads but does not write; write "
                                 "OME-Zarr (out.zarr) or a TIFF stack (out.tif), which napari and Fiji open")
        if spec.startswith(PRECOMPUTED) or is_precomputed(parsed.path):
            raise DensePredError(f"output {spec!r} is a neuroglancer precomputed volume, which densepred reads but "
                                 "does not write; write OME-Zarr (out.zarr), which neuroglancer opens as zarr://")
        return parsed

    @classmethod
    def _parse(cls, text: str, spec: str, base: Path | None) -> ArraySpec:
        precomputed = text.startswith(PRECOMPUTED)
        text = text.removeprefix(PRECOMPUTED).removeprefix("file://")
        path_text, key = text, None
        for suffix in CONTAINERS:
            at = text.lower().rfind(suffix + ":")  # suffixes in any case: DATA.H5:raw
            if at >= 0:
                path_text, key = text[:at + len(suffix)], text[at + len(suffix) + 1:].strip("/") or None
                break
        if key is None and ":" in text:  # a scale of a precomputed volume: /data/em:16_16_40
            folder, _, scale = text.rpartition(":")
            if precomputed or is_precomputed(resolve(folder, base)):
                path_text, key = folder, scale.strip("/") or None
        if key is None and not precomputed and not is_precomputed(resolve(path_text, base)):
            path_text, key = inner_path(path_text)
        if key is None and not precomputed:  # a zarr node in a store named without .zarr
            path_text, key = zarr_root(path_text, base)
        if key is not None:
            check_key(key, spec)
        return cls(resolve(path_text, base), key)

    def resolved(self) -> ArraySpec:
        """The same array by its absolute path (as a process elsewhere opens it)."""
        return self if self.url is not None else ArraySpec(self.path.resolve(), self.key, self.time)

    @property
    def kind(self) -> str:
        """The format: by the suffix, else by what the folder holds (precomputed, zarr, N5, TIFF
        sections)."""
        if self.url is not None:
            return "precomputed" if self.precomputed else self.source or SUFFIX_KINDS[self.path.suffix.lower()]
        kind = SUFFIX_KINDS.get(self.path.suffix.lower())
        if kind is None and is_precomputed(self.path):
            kind = "precomputed"
        kind = kind or stored_kind(self.path)
        if kind is None:
            raise DensePredError(f"'{self.path}' has an unsupported format; expected {SUPPORTED}")
        return kind

    @property
    def sections(self) -> bool:
        """Whether this is a folder of TIFF sections, or a pattern of them (:mod:`.tiff_sections`)."""
        return (self.path.is_dir() or is_pattern(self.path)) and self.kind == "tiff"

    @property
    def array_text(self) -> str:
        """The whole array's spec, without a time point."""
        prefix = PRECOMPUTED if self.precomputed else f"{self.source}://" if self.source else ""
        where = str(self.path) if self.url is None else prefix + self.url
        return f"{where}:{self.key}" if self.key else where

    def __str__(self) -> str:
        return self.array_text if self.time is None else f"{self.array_text}@t={self.time}"


def remote_spec(text: str, spec: str, precomputed: bool = False, form: str | None = None) -> ArraySpec:
    """A zarr store (or an array or group in it) over HTTP(S), written like a local one:
    ``https://host/em.zarr:recon-1/s0`` or ``https://host/em.zarr/recon-1/s0``; with
    ``precomputed`` (neuroglancer's ``precomputed://`` before it), a precomputed volume there,
    ``precomputed://https://host/em:8_8_40`` for a scale. With ``form`` (neuroglancer's
    ``zarr://`` or ``n5://`` before it), a path without the suffix is a zarr node or N5
    dataset itself, as neuroglancer opens it."""
    parts = urlsplit(public_url(text))  # a public bucket, s3:// or gs://, by its HTTPS address
    if parts.scheme.lower() not in ("http", "https"):
        raise DensePredError(f"array spec {spec!r}: {parts.scheme}:// is not read here; densepred reads over "
                             "http(s)://, s3:// and gs:// (public buckets), or mount the data as a folder")
    if parts.query or parts.fragment:
        raise DensePredError(f"array spec {spec!r} has a query or fragment; a zarr store's URL is its folder's, "
                             "https://host/path/volume.zarr")
    path, key = parts.path, None
    ends = [at + len(suffix) for suffix in (".zarr", ".n5") if (at := path.lower().rfind(suffix + ":")) >= 0]
    if precomputed:
        path, _, scale = path.rpartition(":") if ":" in path else (path, "", "")
        key = scale.strip("/") or None
    elif ends:  # the container's end, then its key
        path, key = path[:max(ends)], path[max(ends) + 1:].strip("/") or None
    else:
        path, key = inner_path(path)
    suffixed = path.lower().rstrip("/").endswith((".zarr", ".n5"))
    if not precomputed and not suffixed and form is None:
        raise DensePredError(f"array spec {spec!r} is a URL of no zarr store or N5 container; densepred reads those "
                             "over HTTP(S), https://host/path/volume.zarr[:array] (a path without the suffix as "
                             "zarr://https://host/path or n5://..., and precomputed://...); download other files first")
    if key is not None:
        check_key(key, spec)
    url = urlunsplit((parts.scheme, parts.netloc, path.rstrip("/"), "", ""))
    return ArraySpec(Path(url), key, url=url, precomputed=precomputed,  # a path no local file has
                     source=None if precomputed or suffixed else form)


FORMAT_NAMES = {"hdf5": "HDF5", "zarr": "zarr", "n5": "N5", "tiff": "TIFF", "npy": "NumPy", "csv": "CSV", "mrc": "MRC",
                "imaris": "Imaris",
                "precomputed": "neuroglancer precomputed"}


def open_array(spec: str | ArraySpec, base: Path | None = None) -> Any:
    """An array-like (``shape``, ``dtype``, slicing) for a spec, read lazily where possible."""
    spec = spec if isinstance(spec, ArraySpec) else ArraySpec.parse(spec, base)
    if spec.url is not None:
        pass  # reached when it is read
    elif is_pattern(spec.path) and spec.kind == "tiff":
        if not section_files(spec.path):
            raise DensePredError(f"input not found: no TIFF file matches {spec.path}")
    elif not spec.path.exists():
        raise DensePredError(f"input not found: {spec.path}")
    kind = spec.kind
    try:
        if kind in OPENERS:
            return OPENERS[kind](spec)
        if spec.time is not None:
            raise DensePredError(f"{spec} names a time point, but a {kind} file names no axes: only files whose "
                                 "axes say which is time (OME-Zarr, zarr with dimension names, TIFF, HDF5 with "
                                 "axistags) have time points to choose from")
        if kind == "npy":
            return np.load(spec.path, mmap_mode="r", allow_pickle=False)
        return _read_csv(spec.path)
    except (DensePredError, MemoryError):
        raise
    except (OSError, ValueError) as exc:
        raise DensePredError(f"cannot read {spec}: {exc}") from None
    except Exception as exc:  # a damaged file: its reader fails in its own way (KeyError, TypeError, ...)
        if server_failed(exc):  # the server's answer, not the file's
            raise DensePredError(f"cannot read {spec}: {reason(exc)}") from None
        raise DensePredError(f"cannot read {spec}: {reason(exc)}; it is damaged, or not a valid "
                             f"{FORMAT_NAMES.get(kind, kind)} file") from None


def _open_hdf5(spec: ArraySpec) -> Any:
    from .hdf5 import open_hdf5

    return open_hdf5(spec.path, spec.key, spec.array_text, spec.time)


def _open_precomputed(spec: ArraySpec) -> Any:
    from .precomputed import PrecomputedArray

    image = PrecomputedArray(spec.url or spec.path, spec.key)
    return channel_first(image, "CZYX"[4 - image.ndim:], spec.array_text, spec.time)


def _open_mrc(spec: ArraySpec) -> Any:
    from .mrc import open_mrc

    return open_mrc(spec.path, spec.array_text, spec.time)


def _mrc_placement(spec: ArraySpec) -> Placement | None:
    from .mrc import mrc_placement

    return mrc_placement(spec.path)


def _open_imaris(spec: ArraySpec) -> Any:
    from .imaris import open_imaris

    return open_imaris(spec.path, spec.array_text, spec.time)


def _imaris_placement(spec: ArraySpec) -> Placement | None:
    from .imaris import imaris_placement

    return imaris_placement(spec.path)


def _open_zarr(spec: ArraySpec) -> Any:
    from .zarr_inputs import open_zarr

    return open_zarr(spec)


def _zarr_placement(spec: ArraySpec) -> Placement | None:
    from .zarr_inputs import zarr_placement

    return zarr_placement(spec)


def _open_n5(spec: ArraySpec) -> Any:
    from .n5 import N5Array, n5_axes

    folder = _n5_dataset(spec)
    return channel_first(N5Array(folder), n5_axes(folder), spec.array_text, spec.time)


def _n5_dataset(spec: ArraySpec) -> Any:
    """The dataset's folder: on disk (:func:`~.n5.dataset_folder`), or over HTTP(S)."""
    from .locations import Location
    from .n5 import dataset_folder, remote_dataset

    return remote_dataset(Location(spec.url), spec.key) if spec.url else dataset_folder(spec.path, spec.key)


def input_placement(spec: ArraySpec) -> Placement | None:
    """The physical voxel size, position and unit of an input, or None where it does not say:
    an OME-Zarr image's (the level the spec names, else level 0), an N5 dataset's
    (:mod:`.n5`), a precomputed scale's (:mod:`.precomputed`), a TIFF's ImageJ or OME
    calibration (:mod:`.tiff_placement`), or those a zarr array or HDF5 dataset carries
    itself (:func:`~.ome_zarr.attribute_placement`: funlib, daisy, CREMI)."""
    try:
        return PLACEMENTS[spec.kind](spec) if spec.kind in PLACEMENTS else None
    except (KeyError, TypeError, ValueError, OSError):
        return None


def _hdf5_placement(spec: ArraySpec) -> Placement | None:
    from .hdf5 import hdf5_placement

    return hdf5_placement(spec.path, spec.key)


def _precomputed_placement(spec: ArraySpec) -> Placement | None:
    from .precomputed import precomputed_placement

    return precomputed_placement(spec.url or spec.path, spec.key)


def _tiff_placement(spec: ArraySpec) -> Placement | None:
    from .tiff_placement import sections_placement, tiff_placement

    if spec.sections:
        files = section_files(spec.path)
        return tiff_placement(files[0]) if len(files) == 1 else sections_placement(files[0])
    return tiff_placement(spec.path)


def _n5_placement(spec: ArraySpec) -> Placement | None:
    from .n5 import n5_placement

    try:
        return n5_placement(_n5_dataset(spec))
    except DensePredError:
        return None


def _open_tiff(spec: ArraySpec) -> Any:
    import tifffile

    path = spec.path
    if spec.sections:
        files = section_files(path)
        if len(files) != 1:
            array = open_sections(files, str(path))
            return channel_first(array, "ZYXS"[:array.ndim], str(path), spec.time)
        path = files[0]  # a folder of one file: that file
    with tifffile.TiffFile(path) as tiff:
        axes = tiff.series[0].axes if tiff.series else None
    try:
        array = tifffile.memmap(path, mode="r")
    except ValueError:  # compressed or tiled: not memory-mappable, read by its own strips or tiles
        from .tiff_chunks import TiffChunks

        array = TiffChunks(path)
    return channel_first(array, axes, str(path), spec.time)


def _read_csv(path: Path) -> np.ndarray:
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    try:  # a header is a first row that is not numbers (nan and inf are numbers)
        [float(v) for v in first.split(",")]
        has_header = False
    except ValueError:
        has_header = True
    data = np.loadtxt(path, delimiter=",", skiprows=1 if has_header else 0, ndmin=2)
    return data[:, 0] if data.shape[1] == 1 else data


OPENERS = {"hdf5": _open_hdf5, "zarr": _open_zarr, "n5": _open_n5, "tiff": _open_tiff, "precomputed": _open_precomputed,
           "mrc": _open_mrc, "imaris": _open_imaris}
PLACEMENTS = {"n5": _n5_placement, "hdf5": _hdf5_placement, "zarr": _zarr_placement,
              "precomputed": _precomputed_placement, "tiff": _tiff_placement, "mrc": _mrc_placement,
              "imaris": _imaris_placement}
