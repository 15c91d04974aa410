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
    import zarr

    try:
        attributes = dict(zarr.open_group(path, mode="r").attrs)
    except Exception:  # not a zarr group: another reader's business
        return None
    found = attributes.get("ome", attributes).get("multiscales")
    return found[0] if found else None


def read_ome_zarr(path: str) -> list[LayerData]:
    import dask.array as da
    import zarr

    group = zarr.open_group(path, mode="r")
    attributes = dict(group.attrs)
    ome = attributes.get("ome", attributes)
    image = ome["multiscales"][0]
    axes = [a["name"] for a in image["axes"]]
    levels = [da.from_zarr(group[d["path"]]) for d in image["datasets"]]
    scale, translate = _transforms(image["datasets"][0], len(axes))
    spatial = [i for i, a in enumerate(axes) if a != "c"]
    kwargs: dict[str, Any] = {"name": Path(path).stem, "scale": [scale[i] for i in spatial],
                              "translate": [translate[i] for i in spatial], "multiscale": len(levels) > 1}
    data = levels if len(levels) > 1 else levels[0]
    if "c" in axes:
        names = [c.get("label", str(i)) for i, c in enumerate(ome.get("omero", {}).get("channels", []))]
        kwargs.update(channel_axis=axes.index("c"), name=[f"{kwargs['name']} {n}" for n in names] or None)
        window = ome.get("omero", {}).get("channels", [{}])[0].get("window", {})
        if "start" in window and "end" in window:
            kwargs["contrast_limits"] = (window["start"], window["end"])
        return [(data, kwargs, "image")]
    return [(data, kwargs, "labels" if "image-label" in ome or attributes.get("image-label") else "image")]


def _transforms(dataset: dict[str, Any], ndim: int) -> tuple[list[float], list[float]]:
    scale, translate = [1.0] * ndim, [0.0] * ndim
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale = [float(v) for v in transform["scale"]]
        elif transform.get("type") == "translation":
            translate = [float(v) for v in transform["translation"]]
    return scale, translate


def read_hdf5(path: str) -> list[LayerData]:
    import dask.array as da
    import h5py
    import numpy as np

    layers: list[LayerData] = []
    handle = h5py.File(path, "r")  # kept open: the layers read from it lazily

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset) and item.ndim in (2, 3):
            chunks = item.chunks or tuple(min(64, n) for n in item.shape)
            labels = np.issubdtype(item.dtype, np.integer) and Path(name).name.lower().startswith("label")
            layers.append((da.from_array(item, chunks=chunks), {"name": f"{Path(path).stem}:{name}"},
                           "labels" if labels else "image"))

    handle.visititems(visit)
    return layers
