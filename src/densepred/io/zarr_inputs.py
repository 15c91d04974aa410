"""zarr inputs (v2 and v3): an array, the full-resolution level of an OME-Zarr image group, or
the image of a bioformats2raw folder, with the axes and placement their metadata give."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from ..errors import DensePredError, listed
from .axes import axis_letters, channel_first
from .locations import zarr_store
from .ome_zarr import Placement, attribute_placement, in_zyx_order, ome_placement, spatial_letters


class ArraySpec(Protocol):
    """What is read of an array spec (:class:`densepred.io.ArraySpec`)."""

    path: Path
    key: str | None
    time: int | None
    url: str | None
    source: str | None

    @property
    def array_text(self) -> str: ...


def open_zarr(spec: ArraySpec) -> Any:
    import zarr

    root, node = _zarr_node(spec)
    if isinstance(node, zarr.Array):  # a level of an OME-Zarr image names its axes in the group above
        parent, _, name = (spec.key or "").rpartition("/")
        group = None if root is None else root[parent] if parent else root
        axes = _ome_axes(group, name) if isinstance(group, zarr.Group) else None
        return channel_first(node, axes or axis_letters(_dimension_names(node)), spec.array_text, spec.time)
    image = _ome_first_level(node)
    if image is not None:
        return channel_first(image, _ome_axes(node, _first_level_path(node)), spec.array_text, spec.time)
    inside = sorted(name for name, _ in node.arrays()) + sorted(
        name for name, group in node.groups() if _first_level_path(group) is not None)
    prefix = f"{spec.key}/" if spec.key else ""
    raise DensePredError(f"{spec} is a zarr group; name an array or image in it as {spec.path}:{prefix}PATH "
                         f"(there: {listed(inside)})")


def _zarr_node(spec: ArraySpec) -> tuple[Any, Any]:
    """The store's root group and the node ``spec`` names; a store with no metadata at its root
    (an array some writer put at ``in.zarr/raw`` alone) has no root, and the node is opened
    where it lies."""
    import zarr

    url = spec.url  # over HTTP(S)
    try:
        root = zarr.open(zarr_store(url) if url else spec.path, mode="r")
    except FileNotFoundError:
        if spec.key is None or (url is None and not (spec.path / spec.key).is_dir()):
            if url is None:
                raise
            raise DensePredError(f"cannot read {spec.array_text}: no zarr array or group is there (its zarr.json, "
                                 ".zarray or .zgroup was not found, or not public: densepred reads without "
                                 "credentials)") from None
        try:
            return None, zarr.open(zarr_store(f"{url}/{spec.key}") if url else spec.path / spec.key, mode="r")
        except FileNotFoundError:
            raise DensePredError(f"cannot read {spec.array_text}: no zarr array or group is there") from None
    if spec.key is not None and isinstance(root, zarr.Array):
        raise DensePredError(f"{url or spec.path} is a zarr array, not a group, so it holds no '{spec.key}'; give "
                             f"{url or spec.path} alone")
    try:
        node = root if spec.key is None else root[spec.key]
    except (KeyError, TypeError):
        raise DensePredError(f"array '{spec.key}' not found in {url or spec.path}") from None
    return root, _bioformats2raw_image(spec, node)


def _bioformats2raw_image(spec: ArraySpec, node: Any) -> Any:
    """The image of a bioformats2raw (or OME-Zarr "bioformats2raw.layout") group of one image:
    its series ``0``; a group of several is refused naming them. Any other node as it is."""
    import zarr

    attrs = dict(node.attrs) if isinstance(node, zarr.Group) else {}
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs
    if ome.get("bioformats2raw.layout") != 3 or _first_level_path(node) is not None:
        return node
    series = [name for name, _ in node.groups() if name.isdigit()]
    series.sort(key=int)
    if len(series) == 1:
        return node[series[0]]
    prefix = f"{spec.key}/" if spec.key else ""
    raise DensePredError(f"{spec} holds {len(series)} images (bioformats2raw layout): name one as "
                         f"{spec.path}:{prefix}N, e.g. {spec.path}:{prefix}{series[0] if series else 0} "
                         f"(images: {listed(series)})")


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


def _ome_first_level(group: Any) -> Any:
    """The full-resolution array of an OME-Zarr image group (0.4 or 0.5), else None."""
    path = _first_level_path(group)
    return None if path is None else group[path]


def zarr_placement(spec: ArraySpec) -> Placement | None:
    import zarr

    root, node = _zarr_node(spec)
    if isinstance(node, zarr.Array):
        parent_key, _, dataset = (spec.key or "").rpartition("/")
        group = None if root is None else root[parent_key] if parent_key else root
        if spec.source is not None and spec.key is None:  # zarr://.../em/s0: a level named alone, no store
            group, dataset = _group_above(spec.url)
        placed = ome_placement(dict(group.attrs), dataset) if isinstance(group, zarr.Group) and dataset else None
        return placed or in_zyx_order(attribute_placement(node.attrs),
                                      spatial_letters(axis_letters(_dimension_names(node))))
    dataset = _first_level_path(node)
    return None if dataset is None else ome_placement(dict(node.attrs), dataset)


def _group_above(url: str) -> tuple[Any, str]:
    """The zarr group at the folder above ``url`` (None where there is none) and the name
    ``url`` has in it: over HTTP(S) an OME-Zarr image's metadata lies one request up."""
    import zarr

    folder, _, name = url.rstrip("/").rpartition("/")
    try:
        return zarr.open_group(zarr_store(folder), mode="r"), name
    except Exception:  # no group there (nothing, an array, a page that is no zarr metadata)
        return None, name


def _first_level_path(group: Any) -> str | None:
    attrs = dict(group.attrs)
    ome = attrs.get("ome")
    multiscales = (ome.get("multiscales") if isinstance(ome, dict) else None) or attrs.get("multiscales")
    try:
        path = multiscales[0]["datasets"][0]["path"]
    except (TypeError, KeyError, IndexError):
        return None
    return path if isinstance(path, str) else None


__all__ = ["open_zarr", "zarr_placement"]
