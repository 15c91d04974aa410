"""The paths of array specs: a path that goes on inside a container, a zarr store named
without ``.zarr``, a folder's format by what it holds, a key's rules (:mod:`.arrays` builds
the specs from them)."""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

from ..errors import DensePredError
from .mrc import SUFFIXES as MRC_SUFFIXES
from .tiff_sections import holds_sections

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
CONTAINERS = (*HDF5_SUFFIXES, ".zarr", ".n5")  # formats with paths inside them
FILES = (".tif", ".tiff", ".npy", ".csv", ".ims", *MRC_SUFFIXES)


def inner_path(text: str) -> tuple[str, str | None]:
    """A path that goes on inside a zarr store, an N5 container or an HDF5 file, as OME-Zarr,
    N5 and ilastik write them (``em.zarr/recon-1/em/s0``, ``stack.h5/exported_data``): the
    container and the path inside it; any other path as it is. The last part that names a
    container is the container, unless the path ends in a file of its own (``a.zarr/x.npy``)."""
    parts = PurePosixPath(text.replace(os.sep, "/")).parts
    if not parts or parts[-1].lower().endswith((*CONTAINERS, *FILES)):
        return text, None
    for i in range(len(parts) - 2, -1, -1):
        if parts[i].lower().endswith(CONTAINERS):
            if ".." in parts[i + 1:]:  # leaves the container again: an ordinary path
                break
            return str(PurePosixPath(*parts[:i + 1])), "/".join(parts[i + 1:])
    return text, None


def zarr_root(text: str, base: Path | None) -> tuple[str, str | None]:
    """A zarr array or group in a store whose name does not say zarr (``data/raw``): the
    topmost zarr group above it and the path inside; the path as it is when it is no zarr
    node or is the root already."""
    path = resolve(text, base)
    if Path(text).suffix.lower() in (".zarr", ".n5") or stored_kind(path) != "zarr":
        return text, None
    parts: list[str] = []
    root, steps = path, len(Path(text).parts) - 1  # never above the path as it is written
    while len(parts) < steps and is_zarr_group(root.parent):
        parts.insert(0, root.name)
        root = root.parent
    if not parts:
        return text, None
    return str(Path(text).parents[len(parts) - 1]), "/".join(parts)


def is_zarr_group(folder: Path) -> bool:
    if (folder / ".zgroup").is_file():
        return True
    try:
        return json.loads((folder / "zarr.json").read_text(encoding="utf-8")).get("node_type") == "group"
    except (OSError, ValueError, AttributeError):
        return False


def stored_kind(path: Path) -> str | None:
    """A folder's format by what it holds, whatever its name: ``zarr`` (a store or group of
    either zarr version), ``n5`` (a container's ``attributes.json``), ``tiff`` (a folder of
    sections, :mod:`.tiff_sections`), or None."""
    if not path.is_dir():
        return None
    if any((path / name).is_file() for name in ("zarr.json", ".zarray", ".zgroup")):
        return "zarr"
    if (path / "attributes.json").is_file():
        return "n5"
    return "tiff" if holds_sections(path) else None


def resolve(text: str, base: Path | None) -> Path:
    path = Path(text).expanduser()
    return base / path if base is not None and not path.is_absolute() else path


def check_key(key: str, spec: str) -> None:
    """A dataset or group path inside a file: relative, without ``.`` or ``..`` parts."""
    parts = key.split("/")
    if key.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\\" in key:
        raise DensePredError(f"array spec {spec!r} is invalid: the path inside the file, {key!r}, must be "
                             "relative and must not contain '.', '..' or empty parts (e.g. file.zarr:pred/membranes)")


__all__ = ["CONTAINERS", "FILES", "HDF5_SUFFIXES", "check_key", "inner_path", "is_zarr_group", "resolve", "stored_kind",
           "zarr_root"]
