"""napari reader: OME-Zarr images (what ``densepred predict`` writes), HDF5 files and N5
containers, so ``napari out.zarr raw.h5`` (or ``raw.n5``) shows a prediction over its input
without other plugins.

An OME-Zarr image opens lazily as a multiscale layer with its physical scale and translation;
a channel axis ``c`` becomes one layer per channel (named as in its omero metadata), a label
image (argmax output) a labels layer. An HDF5 file opens every 2D or 3D dataset in it, lazily;
integer datasets whose name starts with ``label`` as labels layers. An N5 container opens
each dataset (a multiscale group as one multiscale layer), placed as densepred places its
prediction (``io/n5.py``); so does a neuroglancer precomputed volume, opened by its ``info``
file, its scales as one multiscale layer (``io/precomputed.py``); an MRC tomogram by its voxel
size (``io/mrc.py``); an Imaris file by its extent (``io/imaris.py``).
"""

from __future__ import annotations

from itertools import count, takewhile
from pathlib import Path
from typing import Any

from ...errors import DensePredError
from ...io.hdf5 import BDV_CELLS, check_hdf5_filters, placement_of, values
from ...io.mrc import SUFFIXES as MRC_SUFFIXES
from ...io.ome_zarr import ome_transform
from ...io.spec_paths import HDF5_SUFFIXES
from .request import SOURCE_KEY

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Any:
    """The reader for ``path``, or None when it is none of the formats this reader opens (an
    OME-Zarr image, an HDF5 file, an N5 container, a precomputed volume, an MRC or Imaris file)."""
    if isinstance(path, list):
        return None
    p = Path(path)
    suffix = p.suffix.lower()
    readers = ((lambda: suffix in HDF5_SUFFIXES and p.is_file(), read_hdf5),
               (lambda: p.is_dir() and _multiscales(p) is not None, read_ome_zarr),
               (lambda: p.is_dir() and any(q.suffix.lower() == ".n5" for q in (p, *p.parents)), read_n5),
               (lambda: _precomputed_folder(p) is not None, read_precomputed),
               (lambda: suffix in MRC_SUFFIXES and p.is_file(), read_mrc),
               (lambda: suffix == ".ims" and p.is_file(), read_imaris))
    return next((reader for applies, reader in readers if applies()), None)


def _precomputed_folder(path: Path) -> Path | None:
    """The precomputed volume ``path`` is (its folder) or whose ``info`` file it is, else None."""
    from ...io.precomputed import is_precomputed

    folder = path.parent if path.name == "info" and path.is_file() else path
    return folder if is_precomputed(folder) else None


def _multiscales(path: Path) -> dict[str, Any] | None:
    try:
        return ome_metadata(path)[1]
    except Exception:  # not a zarr group, or no image in it: another reader's business
        return None


def ome_metadata(path: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None, Any]:
    """An OME-Zarr group's metadata (``ome`` attributes, or the top level in 0.4), its first
    multiscale image (None without one), and the group."""
    import zarr

    group = zarr.open_group(path, mode="r")
    attributes = dict(group.attrs)
    ome = attributes.get("ome", attributes)
    multiscales = ome.get("multiscales")
    return ome, multiscales[0] if multiscales else None, group


def ome_levels(path: str | Path) -> list[Any]:
    """The levels of an OME-Zarr image, full resolution first, as lazy dask arrays."""
    _, image, group = ome_metadata(path)
    if image is None:
        raise DensePredError(f"{path} is not an OME-Zarr image (no multiscales metadata)")
    return _levels(image, group)


def _levels(image: dict[str, Any], group: Any) -> list[Any]:
    import dask.array as da

    return [da.from_zarr(group[d["path"]]) for d in image["datasets"]]


def read_ome_zarr(path: str) -> list[LayerData]:
    """An OME-Zarr image as a multiscale layer, its spatial axes in z, y, x order as densepred
    reads (and predicts) it, so an image stored x first lies under its prediction."""
    ome, image, group = ome_metadata(path)
    order = read_order([str(a["name"]).lower() for a in image["axes"]])
    axes = [str(image["axes"][i]["name"]).lower() for i in order]
    levels = [level.transpose(order) for level in _levels(image, group)]
    scale, translate = ([float(v[i]) for i in order] for v in ome_transform(image, image["datasets"][0]["path"]))
    spatial = [i for i, a in enumerate(axes) if a != "c"]
    kwargs: dict[str, Any] = {"name": Path(path).stem, "scale": [scale[i] for i in spatial],
                              "translate": [translate[i] for i in spatial], "multiscale": len(levels) > 1,
                              "axis_labels": [axes[i] for i in spatial]}  # a time axis stays time for the widget
    data = levels if len(levels) > 1 else levels[0]
    if "c" in axes:
        names = [c.get("label", str(i)) for i, c in enumerate(ome.get("omero", {}).get("channels", []))]
        kwargs.update(channel_axis=axes.index("c"), name=[f"{kwargs['name']} {n}" for n in names] or None)
        window = ome.get("omero", {}).get("channels", [{}])[0].get("window", {})
        if "start" in window and "end" in window:
            kwargs["contrast_limits"] = (window["start"], window["end"])
        return [(data, kwargs, "image")]
    return [(data, kwargs, "labels" if "image-label" in ome else "image")]


def read_order(axes: list[str]) -> list[int]:
    """The axes of an image, their other axes (time, channels) first as they are, then the
    spatial ones in z, y, x order where they are named so."""
    spatial = [i for i, a in enumerate(axes) if a in ("z", "y", "x")]
    if len({axes[i] for i in spatial}) != len(spatial):
        return list(range(len(axes)))
    return [i for i in range(len(axes)) if i not in spatial] + sorted(spatial, key=lambda i: "zyx".index(axes[i]))


def read_hdf5(path: str) -> list[LayerData]:
    import dask.array as da
    import h5py
    import numpy as np

    layers: list[LayerData] = []
    handle = h5py.File(path, "r")  # kept open: the layers read from it lazily

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset) and item.ndim in (2, 3) and not _lower_level(name):
            check_hdf5_filters(item, f"{path}:{name}")  # Blosc, Bitshuffle: hdf5plugin's filters registered
            chunks = item.chunks or tuple(min(64, n) for n in item.shape)
            labels = np.issubdtype(item.dtype, np.integer) and Path(name).name.lower().startswith("label")
            kwargs = {"name": f"{Path(path).stem}:{name}", "metadata": {SOURCE_KEY: f"{path}:{name}"}}
            placement = placement_of(handle, Path(path), name, read_order=False)  # the layer keeps the file's order
            if placement is not None and len(placement.voxel_size) == item.ndim:
                kwargs.update(scale=list(placement.voxel_size), translate=list(placement.translation))
            layers.append((da.from_array(values(handle, item), chunks=chunks), kwargs,
                           "labels" if labels else "image"))

    handle.visititems(visit)
    return layers


def _lower_level(name: str) -> bool:
    """Whether ``name`` is a downsampled level of a BigDataViewer view (only level 0 opens)."""
    found = BDV_CELLS.search(name)
    return found is not None and found.group(2) != "0"


MAX_N5_LAYERS = 16  # datasets of one container opened as layers


def read_n5(path: str) -> list[LayerData]:
    """Each dataset of an N5 container (or the one ``path`` names), lazily; a multiscale group
    (``s0``, ``s1``, ...) as one multiscale layer, placed by its attributes."""
    from ...io.n5 import datasets, is_dataset

    folder = Path(path)
    root = next(p for p in (folder, *folder.parents) if p.suffix.lower() == ".n5")
    found = [""] if is_dataset(folder) or is_dataset(folder / "s0") else datasets(folder)[:MAX_N5_LAYERS]
    if not found:
        raise DensePredError(f"{path} holds no N5 dataset")
    layers = []
    for name in found:
        key = (folder / name).relative_to(root).as_posix()
        layers.append(_n5_layer(folder / name, f"{folder.stem}{':' + name if name else ''}",
                                f"{root}:{key}" if key != "." else str(root)))
    return layers


def _n5_layer(folder: Path, name: str, spec: str) -> LayerData:
    import dask.array as da

    from ...io.n5 import N5Array, is_dataset, n5_axes, n5_placement

    paths = [folder] if is_dataset(folder) else list(takewhile(is_dataset, (folder / f"s{i}" for i in count())))
    arrays = [N5Array(p) for p in paths]
    levels = [da.from_array(a, chunks=a.chunks) for a in arrays]
    axes = n5_axes(paths[0]) or ""
    kwargs: dict[str, Any] = {"name": name, "multiscale": len(levels) > 1, "metadata": {SOURCE_KEY: spec}}
    if "C" in axes:
        kwargs["channel_axis"] = axes.index("C")
    placement = n5_placement(paths[0], read_order=False)  # the layer keeps the stored order (reversed)
    if placement is not None:  # other axes than space (time) in front: 1 and 0
        lead = arrays[0].ndim - ("C" in axes) - len(placement.voxel_size)
        kwargs.update(scale=[1.0] * lead + list(placement.voxel_size),
                      translate=[0.0] * lead + list(placement.translation))
    return (levels if len(levels) > 1 else levels[0], kwargs, "image")


def read_precomputed(path: str) -> list[LayerData]:
    """A precomputed volume, lazily, as one layer: its scales as levels (while each is smaller
    than the one before), channels split, placed by its finest scale."""
    import dask.array as da

    from ...io.precomputed import PrecomputedArray, precomputed_placement, read_info

    folder = _precomputed_folder(Path(path))
    if folder is None:
        raise DensePredError(f"{path} is not a neuroglancer precomputed volume (a folder with an info file)")
    keys = [str(scale.get("key", "")).strip("/") for scale in read_info(folder)["scales"] if isinstance(scale, dict)]
    arrays = [PrecomputedArray(folder, keys[0])]
    for key in keys[1:]:
        array = PrecomputedArray(folder, key)
        if array.shape == arrays[-1].shape or any(a > b for a, b in zip(array.shape, arrays[-1].shape, strict=True)):
            break
        arrays.append(array)
    levels = [da.from_array(a, chunks=a.chunks) for a in arrays]
    kwargs: dict[str, Any] = {"name": folder.name, "multiscale": len(levels) > 1, "metadata": {SOURCE_KEY: str(folder)}}
    if arrays[0].channels > 1:
        kwargs["channel_axis"] = 0
    placement = precomputed_placement(folder, keys[0])
    if placement is not None:
        kwargs.update(scale=list(placement.voxel_size), translate=list(placement.translation))
    return [(levels if len(levels) > 1 else levels[0], kwargs, "image")]


def read_mrc(path: str) -> list[LayerData]:
    """An MRC tomogram, map or stack, memory-mapped, placed by its voxel size as its prediction is;
    densepred's predictions as it wrote them: classes as channels, labels as a labels layer."""
    import dask.array as da

    from ...io.mrc import holds_labels, mrc_placement, open_mrc

    data = open_mrc(Path(path), path, None)
    kwargs: dict[str, Any] = {"name": Path(path).stem, "metadata": {SOURCE_KEY: path}}
    classes = data.ndim == 4  # a volume per class
    if classes:
        kwargs["channel_axis"] = 0
    placement = mrc_placement(Path(path))
    if placement is not None:
        kwargs.update(scale=list(placement.voxel_size), translate=list(placement.translation))
    spatial = data.shape[classes:]
    lazy = da.from_array(data, chunks=(*(1,) * classes, min(64, spatial[0]), *spatial[1:]))
    return [(lazy, kwargs, "labels" if holds_labels(Path(path)) else "image")]


def read_imaris(path: str) -> list[LayerData]:
    """An Imaris file's full resolution, lazily: one layer per channel, time points as the first
    axis where there are several, placed by its extent as its prediction is."""
    import dask.array as da
    import h5py

    from ...io.imaris import ImarisVolume, imaris_placement

    volume = ImarisVolume(h5py.File(path, "r"), path)  # the file kept open: read from lazily
    data = da.from_array(volume, chunks=(1, 1, min(64, volume.shape[2]), *volume.shape[3:]))
    if volume.shape[0] == 1:
        data = data[0]
    kwargs: dict[str, Any] = {"name": Path(path).stem, "channel_axis": data.ndim - 4,
                              "metadata": {SOURCE_KEY: path}}
    placement = imaris_placement(Path(path))
    if placement is not None:
        time = data.ndim - 4  # a time axis in front (the channel axis is split off)
        kwargs.update(scale=[1.0] * time + list(placement.voxel_size),
                      translate=[0.0] * time + list(placement.translation))
    return [(data, kwargs, "image")]
