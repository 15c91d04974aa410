"""napari reader: OME-Zarr images (what ``densepred predict`` writes) and HDF5 files, so
``napari out.zarr raw.h5`` shows a prediction over its input without other plugins.

An OME-Zarr image opens lazily as a multiscale layer with its physical scale and translation;
a channel axis ``c`` becomes one layer per channel (named as in its omero metadata), a label
image (argmax output) a labels layer. An HDF5 file opens every 2D or 3D dataset in it, lazily;
integer datasets whose name starts with ``label`` as labels layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import DensePredError
from ...io.hdf5 import check_hdf5_filters
from ...io.ome_zarr import ome_transform

LayerData = tuple[Any, dict[str, Any], str]
HDF5 = (".h5", ".hdf5", ".hdf")


def get_reader(path: str | list[str]) -> Any:
    """The reader for ``path``, or None when it is neither an OME-Zarr image nor an HDF5 file."""
    if isinstance(path, list):
        return None
    p = Path(path)
    if p.suffix.lower() in HDF5 and p.is_file():
        return read_hdf5
    if p.is_dir() and _multiscales(p) is not None:
        return read_ome_zarr
    return None


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
    ome, image, group = ome_metadata(path)
    axes = [a["name"] for a in image["axes"]]
    levels = _levels(image, group)
    scale, translate = ome_transform(image, image["datasets"][0]["path"])
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


def read_hdf5(path: str) -> list[LayerData]:
    import dask.array as da
    import h5py
    import numpy as np

    layers: list[LayerData] = []
    handle = h5py.File(path, "r")  # kept open: the layers read from it lazily

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset) and item.ndim in (2, 3):
            check_hdf5_filters(item, f"{path}:{name}")  # Blosc, Bitshuffle: hdf5plugin's filters registered
            chunks = item.chunks or tuple(min(64, n) for n in item.shape)
            labels = np.issubdtype(item.dtype, np.integer) and Path(name).name.lower().startswith("label")
            layers.append((da.from_array(item, chunks=chunks), {"name": f"{Path(path).stem}:{name}"},
                           "labels" if labels else "image"))

    handle.visititems(visit)
    return layers
