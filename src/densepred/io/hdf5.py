"""HDF5 inputs as acquisition and analysis software write them.

* **Axes**: ilastik's and vigra's ``axistags`` (channels often last, ``zyxc``), else h5py
  dimension labels.
* **Filters** beyond HDF5's own gzip (Blosc, Bitshuffle-LZ4, Zstandard: detector and
  tomography software): hdf5plugin's, registered when a dataset needs one; a filter nothing
  here decodes is one line when the file is opened, not a read error taken for corruption.
* **BigDataViewer / BigStitcher files** (``t00000/s00/0/cells``: time point, setup, level):
  a view is named by its group (``dataset.h5:t00000/s00``, its full resolution); 16-bit
  unsigned volumes are stored as int16 (Java has no unsigned short) and read unsigned; the
  voxel size is in the ``dataset.xml`` beside the file.
* **Placement** carried as attributes (CREMI's ``resolution`` and ``offset``; funlib's).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DensePredError, listed
from .axes import axis_letters, channel_first
from .ome_zarr import Placement, attribute_placement, checked_placement, in_zyx_order, space_unit, spatial_letters
from .reading import BoxArray

BDV_CELLS = re.compile(r"t\d+/s(\d+)/(\d+)/cells$")  # BigDataViewer: time point, setup, level


def open_hdf5(path: Path, key: str | None, where: str, time: int | None) -> Any:
    """The dataset ``key`` of the HDF5 file ``path`` (its only one where ``key`` is None), in
    densepred's axis order, read lazily; ``where`` names it in messages."""
    import h5py

    handle = h5py.File(path, "r")  # kept open: the dataset is read from it lazily
    dataset = handle[dataset_name(handle, path, key)]
    check_hdf5_filters(dataset, where)
    return channel_first(values(handle, dataset), _axes(dataset), where, time)


def values(handle: Any, dataset: Any) -> Any:
    """``dataset`` as its values are meant: a BigDataViewer volume's int16 read unsigned."""
    if dataset.dtype == np.int16 and _bdv_volume(handle, dataset.name):
        return UnsignedView(dataset)
    return dataset


def dataset_name(handle: Any, path: Path, key: str | None) -> str:
    """The dataset a spec's ``key`` names: itself, a BigDataViewer view's full resolution, or
    the file's only dataset; else one line listing the datasets."""
    import h5py

    if key is not None and isinstance(handle.get(key), h5py.Dataset):
        return key  # the file's other objects are not visited (thousands in a BigDataViewer file)
    datasets = hdf5_datasets(handle)
    if key is not None and key not in datasets and f"{key}/0/cells" in datasets:  # a BigDataViewer view
        return f"{key}/0/cells"
    if key is None and len(datasets) != 1:
        raise DensePredError(f"{path} holds {len(datasets)} datasets; name one as {path}:DATASET (available: "
                             f"{listed(datasets)})")
    if key is not None and key not in datasets:
        raise DensePredError(f"dataset '{key}' not found in {path}; available: {listed(datasets)}")
    return key or datasets[0]


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


def _axes(dataset: Any) -> str | None:
    """An HDF5 dataset's axes: ilastik's and vigra's ``axistags`` attribute (channels often last,
    ``zyxc``), else h5py dimension labels."""
    try:
        tags = dataset.attrs.get("axistags")
        if tags is not None:
            return axis_letters([axis["key"] for axis in json.loads(tags)["axes"]])
        return axis_letters([dim.label for dim in dataset.dims])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _bdv_volume(handle: Any, name: str) -> bool:
    """Whether dataset ``name`` is a volume of a BigDataViewer file (its setups list their
    levels' ``resolutions``)."""
    import h5py

    found = BDV_CELLS.search(name.lstrip("/"))
    setup = handle.get(f"s{found.group(1)}") if found else None
    return isinstance(setup, h5py.Group) and "resolutions" in setup


class UnsignedView(BoxArray):
    """A BigDataViewer HDF5 volume of 16-bit unsigned values, which BigDataViewer stores as
    int16 and reads as unsigned: the same bits, read unsigned, so a voxel of 40000 is 40000,
    not -25536."""

    def __init__(self, dataset: Any):
        self.dataset, self.file, self.name = dataset, dataset.file, dataset.name  # file, name: read errors
        self.shape, self.ndim, self.chunks = dataset.shape, dataset.ndim, dataset.chunks
        self.dtype = np.dtype(np.uint16)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.dataset[key]).view(np.uint16)


def hdf5_placement(path: Path, key: str | None) -> Placement | None:
    """Where the dataset's voxels lie: a BigDataViewer volume's by its ``dataset.xml``, any
    other's by its own attributes; None where neither says."""
    import h5py

    with h5py.File(path, "r") as handle:
        return placement_of(handle, path, dataset_name(handle, path, key))


def placement_of(handle: Any, path: Path, name: str, read_order: bool = True) -> Placement | None:
    """:func:`hdf5_placement` of dataset ``name`` in the open file ``handle`` (at ``path``): in
    the order densepred reads its axes in, or with ``read_order=False`` in the stored order."""
    found = BDV_CELLS.search(name) if _bdv_volume(handle, name) else None
    if found is not None:
        factors = handle[f"s{found.group(1)}/resolutions"][int(found.group(2))]
        return bdv_placement(path, int(found.group(1)), [float(f) for f in factors])
    dataset = handle[name]
    stored = attribute_placement({k: _plain(v) for k, v in dataset.attrs.items()})
    return in_zyx_order(stored, spatial_letters(_axes(dataset))) if read_order else stored


def bdv_placement(path: Path, setup: int, factors: list[float]) -> Placement | None:
    """The voxel size of setup ``setup`` in the BigDataViewer XML beside ``path`` (same name,
    ``.xml``), times a level's downsampling ``factors`` (x first); None without one."""
    from xml.etree import ElementTree

    try:
        root = ElementTree.parse(path.with_suffix(".xml")).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    for view in root.iter("ViewSetup"):
        if (view.findtext("id") or "").strip() == str(setup):
            try:
                size = [float(v) for v in (view.findtext("voxelSize/size") or "").split()][::-1]
                steps = factors[::-1][-len(size):]
            except ValueError:
                return None
            voxel = [s * f for s, f in zip(size, steps, strict=False)]
            shift = [(f - 1) / 2 * s for s, f in zip(size, steps, strict=False)]  # block centres
            unit = space_unit([(view.findtext("voxelSize/unit") or "").strip()] * len(size))
            return checked_placement(voxel, shift, unit) if len(steps) == len(size) else None
    return None


def _plain(value: Any) -> Any:
    """An HDF5 attribute as Python values (arrays as lists, bytes as text)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype.kind in "OSU" else value.tolist()
    return value.decode() if isinstance(value, bytes) else value
