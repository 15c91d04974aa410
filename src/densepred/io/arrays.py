"""Array specs: where an image or label volume lives on disk, opened for reading on demand.

A spec is one string:

* ``file.h5:dataset`` (or ``.hdf5``) - an HDF5 dataset (h5py)
* ``file.zarr`` or ``file.zarr:group/array`` - a zarr array (v2 or v3); a group that is an
  OME-Zarr image stands for its full-resolution array
* ``file.n5:group/dataset`` - an N5 dataset (read only; a multiscale group stands for ``s0``)
* ``file.tif`` / ``file.tiff`` - a TIFF stack (memory-mapped when the file allows)
* ``file.npy`` - a NumPy array (memory-mapped)
* ``file.csv`` - a numeric table (features or labels; read whole)

An input that is a time series of volumes (axes ``t, c, z, y, x`` with several time points)
is one volume per time point: ``movie.zarr@t=3`` names the fourth (``@t=N`` after any of the
forms above), so each time point is its own run, e.g. one task of a batch system's job array.

Relative paths are resolved against ``base`` (the config file's folder), never against a
changed working directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DensePredError
from .axes import axis_letters, channel_first
from .ome_zarr import Placement, attribute_placement, ome_placement
from .reading import BoxArray

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
SUPPORTED = "file.h5:dataset, file.zarr[:path], file.n5[:dataset], file.tif, file.npy or file.csv"
TIME_POINT = re.compile(r"@t=(\d+)$")  # a spec's time point: movie.zarr:0@t=3


@dataclass(frozen=True)
class ArraySpec:
    path: Path
    key: str | None  # dataset inside an HDF5 file or zarr group
    time: int | None = None  # one time point of a time series (``@t=N``)

    @classmethod
    def parse(cls, spec: str, base: Path | None = None) -> ArraySpec:
        if not isinstance(spec, str) or not spec or "\x00" in spec:
            raise DensePredError(f"array spec {spec!r} is invalid; expected {SUPPORTED}")
        time = TIME_POINT.search(spec)
        bad = None if time else re.search(r"@t=([^/:@]*)$", spec)
        if bad:
            raise DensePredError(f"array spec {spec!r} names the time point {bad.group(1)!r}; a time point is a "
                                 f"whole number from 0, e.g. {spec[:bad.start()]}@t=0")
        text = spec[:time.start()] if time else spec
        parsed = cls._parse(text, spec, base)
        return cls(parsed.path, parsed.key, int(time.group(1))) if time else parsed

    @classmethod
    def output(cls, spec: str, base: Path | None = None) -> ArraySpec:
        """An output's spec: a whole array, never a time point."""
        parsed = cls.parse(spec, base)
        if parsed.time is not None:
            raise DensePredError(f"output {spec!r} names a time point; @t=N selects a time point of an input, an "
                                 f"output is a whole array (e.g. {parsed.array_text})")
        return parsed

    @classmethod
    def _parse(cls, text: str, spec: str, base: Path | None) -> ArraySpec:
        path_text, key = text, None
        for suffix in (*HDF5_SUFFIXES, ".zarr", ".n5"):
            at = text.lower().rfind(suffix + ":")  # suffixes in any case: DATA.H5:raw
            if at >= 0:
                path_text, key = text[:at + len(suffix)], text[at + len(suffix) + 1:].strip("/") or None
                break
        if key is not None:
            _check_key(key, spec)
        path = Path(path_text).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        return cls(path, key)

    def resolved(self) -> ArraySpec:
        """The same array by its absolute path (as a process elsewhere opens it)."""
        return ArraySpec(self.path.resolve(), self.key, self.time)

    @property
    def kind(self) -> str:
        suffix = self.path.suffix.lower()
        if suffix in HDF5_SUFFIXES:
            return "hdf5"
        if suffix in (".zarr", ".n5"):
            return suffix[1:]
        if suffix in (".tif", ".tiff"):
            return "tiff"
        if suffix in (".npy", ".csv"):
            return suffix[1:]
        raise DensePredError(f"'{self.path}' has an unsupported format; expected {SUPPORTED}")

    @property
    def array_text(self) -> str:
        """The whole array's spec, without a time point."""
        return f"{self.path}:{self.key}" if self.key else str(self.path)

    def __str__(self) -> str:
        return self.array_text if self.time is None else f"{self.array_text}@t={self.time}"


def _check_key(key: str, spec: str) -> None:
    """A dataset or group path inside a file: relative, without ``.`` or ``..`` parts."""
    parts = key.split("/")
    if key.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\\" in key:
        raise DensePredError(f"array spec {spec!r} is invalid: the path inside the file, {key!r}, must be "
                             "relative and must not contain '.', '..' or empty parts (e.g. file.zarr:pred/membranes)")


def open_array(spec: str | ArraySpec, base: Path | None = None) -> Any:
    """An array-like (``shape``, ``dtype``, slicing) for a spec, read lazily where possible."""
    spec = spec if isinstance(spec, ArraySpec) else ArraySpec.parse(spec, base)
    kind = spec.kind
    if not spec.path.exists():
        raise DensePredError(f"input not found: {spec.path}")
    try:
        if kind == "hdf5":
            return _open_hdf5(spec)
        if kind == "zarr":
            return _open_zarr(spec)
        if kind == "n5":
            return _open_n5(spec)
        if kind == "tiff":
            return _open_tiff(spec.path, spec.time)
        if spec.time is not None:
            raise DensePredError(f"{spec} names a time point, but a {kind} file names no axes: only files whose "
                                 "axes say which is time (OME-Zarr, zarr with dimension names, TIFF, HDF5 with "
                                 "axistags) have time points to choose from")
        if kind == "npy":
            return np.load(spec.path, mmap_mode="r", allow_pickle=False)
        return _read_csv(spec.path)
    except DensePredError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise DensePredError(f"cannot read {spec}: {exc}") from None


def _open_hdf5(spec: ArraySpec) -> Any:
    import h5py

    handle = h5py.File(spec.path, "r")
    datasets = hdf5_datasets(handle)
    key = spec.key
    if key is not None and key not in datasets and f"{key}/0/cells" in datasets:  # a BigDataViewer view
        key = f"{key}/0/cells"  # its full resolution
    if key is None and len(datasets) != 1:
        raise DensePredError(f"{spec.path} holds {len(datasets)} datasets; name one as "
                             f"{spec.path}:DATASET (available: {_listed(datasets)})")
    if key is not None and key not in datasets:
        raise DensePredError(f"dataset '{key}' not found in {spec.path}; available: {_listed(datasets)}")
    dataset = handle[key or datasets[0]]
    check_hdf5_filters(dataset, spec.array_text)
    axes = _hdf5_axes(dataset)
    if dataset.dtype == np.int16 and BDV_CELLS.match(dataset.name.lstrip("/")) and _has_bdv_setups(handle):
        dataset = UnsignedView(dataset)
    return channel_first(dataset, axes, spec.array_text, spec.time)


BDV_CELLS = re.compile(r"t\d+/s\d+/\d+/cells$")  # BigDataViewer: time point, setup, level


def _has_bdv_setups(handle: Any) -> bool:
    """Whether an HDF5 file is BigDataViewer's: its setups list their levels' resolutions."""
    import h5py

    return any(isinstance(handle.get(name), h5py.Group) and "resolutions" in handle[name] for name in handle
               if name.startswith("s") and name[1:].isdigit())


class UnsignedView(BoxArray):
    """A BigDataViewer HDF5 volume of 16-bit unsigned values, which BigDataViewer stores as
    int16 (Java has no unsigned short) and reads as unsigned: the same bits, read unsigned, so
    a voxel of 40000 is 40000, not -25536."""

    def __init__(self, dataset: Any):
        self.dataset, self.file, self.name = dataset, dataset.file, dataset.name  # file, name: read errors
        self.shape, self.ndim, self.chunks = dataset.shape, dataset.ndim, dataset.chunks
        self.dtype = np.dtype(np.uint16)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.dataset[key]).view(np.uint16)


def _listed(names: list[str], most: int = 12) -> str:
    """Names for a message: the first ``most`` of them and how many more."""
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more or "none"


def hdf5_datasets(handle: Any) -> list[str]:
    """The paths of every dataset in an open HDF5 file."""
    import h5py

    datasets: list[str] = []
    handle.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
    return datasets


def check_hdf5_filters(dataset: Any, where: str) -> None:
    """Every compression filter of ``dataset`` decodable here: HDF5's own (gzip, szip, shuffle),
    or one of hdf5plugin's (Blosc, Bitshuffle, LZ4, Zstandard, ...), registered when a dataset
    needs one; else one line naming the filter, not a read error taken for a corrupt file."""
    import h5py

    plist = dataset.id.get_create_plist()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    missing = [f for f in filters if not h5py.h5z.filter_avail(f[0])]
    if missing:
        import hdf5plugin  # noqa: F401 - registers its filters with HDF5 when imported

        missing = [f for f in missing if not h5py.h5z.filter_avail(f[0])]
    if missing:
        names = ", ".join(f"{f[0]} ({f[3].decode(errors='replace') or 'unnamed'})" for f in missing)
        raise DensePredError(f"{where} is compressed with HDF5 filter {names}, which neither HDF5 nor "
                             "hdf5plugin decodes here; install that filter's plugin (HDF5_PLUGIN_PATH) or save the "
                             "dataset with gzip")


def _open_zarr(spec: ArraySpec) -> Any:
    import zarr

    root = node = zarr.open(spec.path, mode="r")
    if spec.key is not None:
        try:
            node = node[spec.key]
        except (KeyError, TypeError):
            raise DensePredError(f"array '{spec.key}' not found in {spec.path}") from None
    if isinstance(node, zarr.Array):  # a level of an OME-Zarr image names its axes in the group above
        parent, _, name = (spec.key or "").rpartition("/")
        group = root[parent] if parent else root
        axes = _ome_axes(group, name) if isinstance(group, zarr.Group) else None
        return channel_first(node, axes or axis_letters(_dimension_names(node)), spec.array_text, spec.time)
    image = _ome_first_level(node)
    if image is not None:
        return channel_first(image, _ome_axes(node, _first_level_path(node)), spec.array_text, spec.time)
    arrays = sorted(name for name, _ in node.arrays())
    raise DensePredError(f"{spec} is a zarr group; name an array as {spec.path}:ARRAY "
                         f"(available: {', '.join(arrays) or 'none'})")


def _open_n5(spec: ArraySpec) -> Any:
    from .n5 import N5Array, dataset_folder, n5_axes

    folder = dataset_folder(spec.path, spec.key)
    return channel_first(N5Array(folder), n5_axes(folder), spec.array_text, spec.time)


def _ome_axes(group: Any, path: str | None) -> str | None:
    """The axes of the OME-Zarr image ``group`` as letters of ``TCZYX`` (0.1 and 0.2 have no
    axes field: always t, c, z, y, x), when its multiscales list ``path`` among their levels;
    None for any other array."""
    attrs = dict(group.attrs)
    multiscales = attrs.get("ome", {}).get("multiscales") or attrs.get("multiscales")
    try:
        multiscale = multiscales[0]
        if path not in [d["path"] for d in multiscale["datasets"]]:
            return None
        letters = []
        for axis in multiscale.get("axes") or ("tczyx" if multiscale.get("version") in ("0.1", "0.2") else ()):
            name, kind = (axis, None) if isinstance(axis, str) else (axis.get("name"), axis.get("type"))
            letters.append({"time": "T", "channel": "C"}.get(kind) or str(name).upper())
    except (TypeError, KeyError, IndexError, AttributeError):
        return None
    return "".join(letters) or None


def _dimension_names(array: Any) -> list[str] | None:
    """A zarr array's own axis names: zarr v3's ``dimension_names``, or xarray's
    ``_ARRAY_DIMENSIONS`` attribute in zarr v2."""
    names = getattr(array.metadata, "dimension_names", None) or array.attrs.get("_ARRAY_DIMENSIONS")
    return list(names) if names else None


def _hdf5_axes(dataset: Any) -> str | None:
    """An HDF5 dataset's axes: ilastik's and vigra's ``axistags`` attribute (channels often last,
    ``zyxc``), else h5py dimension labels."""
    import json

    try:
        tags = dataset.attrs.get("axistags")
        if tags is not None:
            return axis_letters([axis["key"] for axis in json.loads(tags)["axes"]])
        return axis_letters([dim.label for dim in dataset.dims])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _ome_first_level(group: Any) -> Any:
    """The full-resolution array of an OME-Zarr image group (0.4 or 0.5), else None."""
    path = _first_level_path(group)
    return None if path is None else group[path]


def input_placement(spec: ArraySpec) -> Placement | None:
    """The physical voxel size, position and unit of an input, or None where it does not say:
    an OME-Zarr image's (the level the spec names, else level 0), an N5 dataset's
    (:mod:`.n5`), or those a zarr array or HDF5 dataset carries itself
    (:func:`~.ome_zarr.attribute_placement`: funlib, daisy, CREMI)."""
    try:
        if spec.kind == "n5":
            return _n5_placement(spec)
        if spec.kind == "hdf5":
            return _hdf5_placement(spec)
        if spec.kind == "zarr":
            return _zarr_placement(spec)
    except (KeyError, TypeError, ValueError, OSError):
        return None
    return None


def _zarr_placement(spec: ArraySpec) -> Placement | None:
    import zarr

    root = zarr.open(spec.path, mode="r")
    node = root[spec.key] if spec.key else root
    if isinstance(node, zarr.Array):
        parent_key, _, dataset = (spec.key or "").rpartition("/")
        group = root[parent_key] if parent_key else root
        placed = ome_placement(dict(group.attrs), dataset) if isinstance(group, zarr.Group) and dataset else None
        return placed or attribute_placement(node.attrs)
    dataset = _first_level_path(node)
    return None if dataset is None else ome_placement(dict(node.attrs), dataset)


def _hdf5_placement(spec: ArraySpec) -> Placement | None:
    import h5py

    with h5py.File(spec.path, "r") as handle:
        datasets = hdf5_datasets(handle)
        key = spec.key or (datasets[0] if len(datasets) == 1 else None)
        if key is None or key not in datasets:
            return None
        return attribute_placement({name: _plain(value) for name, value in handle[key].attrs.items()})


def _plain(value: Any) -> Any:
    """An HDF5 attribute as Python values (arrays as lists, bytes as text)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype.kind in "OSU" else value.tolist()
    return value.decode() if isinstance(value, bytes) else value


def _n5_placement(spec: ArraySpec) -> Placement | None:
    from .n5 import N5Array, dataset_folder, n5_axes, n5_placement

    try:
        folder = dataset_folder(spec.path, spec.key)
        axes = n5_axes(folder)
        spatial = sum(a in "ZYX" for a in axes) if axes else min(3, N5Array(folder).ndim)
    except DensePredError:
        return None
    return n5_placement(folder, spatial)


def _first_level_path(group: Any) -> str | None:
    attrs = dict(group.attrs)
    multiscales = attrs.get("ome", {}).get("multiscales") or attrs.get("multiscales")
    try:
        return multiscales[0]["datasets"][0]["path"]
    except (TypeError, KeyError, IndexError):
        return None


def _open_tiff(path: Path, time: int | None = None) -> Any:
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        axes = tiff.series[0].axes if tiff.series else None
    try:
        array = tifffile.memmap(path, mode="r")
    except ValueError:  # compressed or tiled: not memory-mappable, read by its own strips or tiles
        from .tiff_chunks import TiffChunks

        array = TiffChunks(path)
    return channel_first(array, axes, str(path), time)


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
