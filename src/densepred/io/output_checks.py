"""What an output may be, and what may be replaced: never data densepred did not write.

* An input a densepred run wrote must be finished (:func:`check_finished`).
* An output is checked before anything is created or deleted: a known format, a folder that
  exists and is writable, a zarr key that stays inside its store, a zarr container of the
  same format (v3), an HDF5 file that is not the input's own file.
* ``--overwrite`` replaces only what a densepred run wrote: an HDF5 dataset or a zarr group
  carrying the ``densepred`` attribute, or a TIFF/NumPy file with a run record beside it
  (:func:`record_folder`); a file densepred never wrote is refused whatever its name.
  An HDF5 file is never deleted, only the dataset inside it; a file h5py cannot open for
  writing (open elsewhere, locked, read-only, corrupt) is an error, never a reason to delete.
* A zarr output, like a run record, is first renamed out of the way (to a hidden
  ``.<record folder>.<id>.deleting`` beside it), then deleted, so a process killed while
  deleting leaves its name free instead of a half-deleted folder there; such leftovers go
  with the next run to that output (:func:`clear_deleted`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import DensePredError
from .arrays import ArraySpec
from .outputs import WRITABLE, h5_key
from .reading import reason

MARK = "densepred"  # the attribute densepred predict puts on every zarr and HDF5 output


def check_writable(spec: ArraySpec) -> None:
    """Raise a clear error now if the output cannot be written at all."""
    if spec.kind not in ("zarr", "hdf5", "tiff", "mrc", "npy"):
        raise DensePredError(f"cannot write '{spec.path}'; expected an output like {WRITABLE}")
    if spec.path.is_symlink() and not spec.path.exists():
        raise DensePredError(f"cannot write {spec}: it is a symbolic link to {os.readlink(spec.path)}, which does "
                             "not exist; give the path it should point to, or remove the link")
    folder = spec.path.parent
    if not folder.is_dir():
        raise DensePredError(f"cannot write {spec}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DensePredError(f"cannot write {spec}: no permission to write in {folder}")
    if spec.kind == "zarr":
        _check_zarr_container(spec)


def check_files(source: ArraySpec, output: ArraySpec) -> None:
    """A job's input and output, before anything is read or written: the output writable and
    not the input (:func:`check_writable`, :func:`check_not_input`), the input finished
    (:func:`check_finished`)."""
    check_writable(output)
    check_not_input(output, source)
    check_finished(source)


def check_not_input(output: ArraySpec, source: ArraySpec) -> None:
    """Refuse an output that is the input, or lies in the input's own HDF5 file or zarr array."""
    if source.url is not None or output.path.resolve() != source.path.resolve():
        return
    if output.kind == "hdf5" and output.key != source.key:
        raise DensePredError(
            f"the output {output} is in the input's own HDF5 file, which is open for reading while the "
            f"prediction is written; write to another file (e.g. {output.path.with_name('prediction.h5')}:"
            f"{h5_key(output)}) and keep {output.path} as it is")
    if output.kind == "zarr" and output.key and source.key and not _nested(output.key, source.key):
        return  # another group of the same store
    raise DensePredError(f"the output {output} is the input ({source}) or holds it; choose another output")


def _nested(a: str, b: str) -> bool:
    a_parts, b_parts = a.strip("/").split("/"), b.strip("/").split("/")
    shorter = min(len(a_parts), len(b_parts))
    return a_parts[:shorter] == b_parts[:shorter]


def _check_zarr_container(spec: ArraySpec) -> None:
    root = spec.path
    if not root.exists():
        return
    if not root.is_dir():
        raise DensePredError(f"cannot write {spec}: {root} is a file, not a zarr store")
    if (root / ".zgroup").exists() or (root / ".zarray").exists():
        raise DensePredError(
            f"cannot write {spec}: {root} is a zarr v2 store and densepred writes zarr v3 (OME-Zarr 0.5); "
            "one container cannot hold both (zarr would list only the v3 part); choose a new .zarr output")
    if not (root / "zarr.json").exists() and any(root.iterdir()):
        raise DensePredError(f"cannot write {spec}: {root} is a folder that is not a zarr store; "
                             "choose a new .zarr output")


def output_exists(spec: ArraySpec) -> bool:
    """Whether the output named by ``spec`` is already there (for HDF5: the dataset). An empty
    folder for a zarr output (made ahead by a job script) is no output: it is written into."""
    if spec.kind == "hdf5":
        if not spec.path.exists():
            return False
        with _h5_file(spec, "r") as f:
            return h5_key(spec) in f
    target = _target(spec)
    if spec.kind == "zarr" and target.is_dir() and not target.is_symlink():
        return any(target.iterdir())
    return target.exists()


def check_replaceable(spec: ArraySpec) -> None:
    """Raise unless the existing output is one ``--overwrite`` may replace (see the module docstring)."""
    if spec.kind == "hdf5":
        with _h5_file(spec, "a") as f:  # the file must open for writing, or nothing is deleted at all
            key = h5_key(spec)
            if key in f and MARK not in f[key].attrs:
                raise _not_ours(spec)
        return
    target = _target(spec)
    link = next((p for p in (spec.path, target) if p.is_symlink()), None)
    if link is not None:
        raise DensePredError(f"cannot replace {spec}: {link} is a symbolic link (to {link.resolve()}); --overwrite "
                             "replaces only what densepred wrote at that path: give the link's target as the output")
    if spec.kind == "zarr" and target.exists() and not _zarr_written_by_densepred(target):
        raise _not_ours(spec)
    if spec.kind != "zarr" and target.is_dir():
        raise DensePredError(f"cannot replace {spec}: it is a folder, not a {spec.kind} file")
    if spec.kind in ("npy", "tiff", "mrc") and target.exists() and not (record_folder(spec) / "run.json").is_file():
        raise _not_ours(spec)


def check_finished(spec: ArraySpec) -> None:
    """Refuse an input that a densepred run wrote and has not finished: its tiles not yet
    written read as zeros (the fill value), which a prediction from it would take for data."""
    state = _densepred_state(spec)
    if isinstance(state, dict) and state.get("complete") is False:
        raise DensePredError(f"{spec} is the output of a densepred run that has not finished, so its tiles not yet "
                             "written would read as zeros; finish it first (densepred predict ... --resume), or "
                             "wait for the run writing it")


def _densepred_state(spec: ArraySpec) -> Any:
    """The ``densepred`` attribute of the array ``spec`` or of a zarr group holding it (the
    OME-Zarr image), or a TIFF/NumPy file's run record; None when densepred did not write it
    (or the store is read over HTTP(S): densepred writes to a file system)."""
    if spec.url is not None:
        return None
    try:
        if spec.kind == "zarr":
            parts = spec.key.split("/") if spec.key else []
            for depth in range(len(parts), -1, -1):
                meta = spec.path.joinpath(*parts[:depth]) / "zarr.json"
                if meta.is_file():
                    state = json.loads(meta.read_text(encoding="utf-8")).get("attributes", {}).get(MARK)
                    if state is not None:
                        return state
            return None
        if spec.kind == "hdf5":
            import h5py

            with h5py.File(spec.path, "r") as f:
                value = f[h5_key(spec)].attrs.get(MARK) if h5_key(spec) in f else None
            return None if value is None else json.loads(value)
        record = record_folder(spec) / "run.json"
        return json.loads(record.read_text(encoding="utf-8")) if record.is_file() else None
    except Exception:  # damaged or unreadable here: the reader says so in its own words
        return None


def record_folder(spec: ArraySpec) -> Path:
    """The run-record folder beside an output: ``<file><.key>.densepred``, the key percent-encoded
    so that no two outputs share one (``col.zarr:a/b`` and ``col.zarr:a.b`` stay apart)."""
    suffix = f".{quote(spec.key, safe='.-_')}" if spec.key else ""
    return spec.path.with_name(spec.path.name + suffix + ".densepred")


def remove_output(spec: ArraySpec, checked: bool = False) -> None:
    """Delete an output a densepred run wrote (for HDF5 only the dataset); refuse anything else
    (``checked``: :func:`check_replaceable` passed just now, before its record was cleared)."""
    set_aside(spec, checked)
    clear_deleted(spec)


def set_aside(spec: ArraySpec, checked: bool = False) -> None:
    """Free the output's name at once: a zarr folder renamed out of the way (:func:`move_aside`)
    for :func:`clear_deleted` to delete (a run does that beside its work), an HDF5 dataset
    deleted, a file unlinked; refuse an output densepred did not write."""
    if not checked:
        check_replaceable(spec)
    if spec.kind == "hdf5":
        with _h5_file(spec, "a") as f:
            if h5_key(spec) in f:
                del f[h5_key(spec)]
        return
    target = _target(spec)
    if target.is_dir():
        move_aside(target, spec)
    else:
        target.unlink(missing_ok=True)


def move_aside(folder: Path, spec: ArraySpec) -> None:
    """Rename ``folder`` (the output ``spec``'s, or its record's) to a hidden
    ``.<record folder>.<id>.deleting`` beside it, for :func:`clear_deleted`: a kill while it is
    deleted never leaves it half there under its name."""
    trash = spec.path.parent / f".{record_folder(spec).name}.{uuid.uuid4().hex}.deleting"
    with contextlib.suppress(FileNotFoundError):
        folder.rename(trash)


def clear_deleted(spec: ArraySpec) -> int:
    """Delete the output's and its record's renamed-away folders (:func:`move_aside`): those
    set aside to be deleted later, and what earlier runs were killed while deleting; returns how
    many there were."""
    stale = list(spec.path.parent.glob(f".{record_folder(spec).name}.*.deleting"))
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return len(stale)


def _target(spec: ArraySpec) -> Path:
    return spec.path / spec.key if spec.kind == "zarr" and spec.key else spec.path


def _zarr_written_by_densepred(folder: Path) -> bool:
    import zarr

    try:
        group = zarr.open_group(folder, mode="r")
    except (OSError, ValueError, KeyError, zarr.errors.GroupNotFoundError):
        return False
    except Exception as exc:  # its zarr.json parses as JSON, but not as zarr metadata
        raise DensePredError(f"cannot replace {folder}: its zarr metadata is damaged ({reason(exc)}), so whether "
                             "densepred wrote it is unknown; delete it yourself, or choose another output") from None
    names = {p.name for p in folder.iterdir() if p.is_dir()}  # its levels, whatever state their metadata is in
    return MARK in group.attrs and names <= {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}


def _not_ours(spec: ArraySpec) -> DensePredError:
    return DensePredError(f"{spec} exists and was not written by densepred predict; --overwrite replaces only "
                          "densepred outputs, so choose another output (or delete it yourself)")


@contextlib.contextmanager
def _h5_file(spec: ArraySpec, mode: str) -> Iterator[Any]:
    """``h5py.File`` whose failure to open is a clear error that deletes nothing."""
    import h5py

    try:
        handle = h5py.File(spec.path, mode)
    except OSError as exc:
        why = str(exc).split("(")[0].strip() or "unreadable"
        raise DensePredError(
            f"cannot open {spec.path} for {'reading' if mode == 'r' else 'writing'} ({why}): it may be open "
            "in another program, locked, read-only or not an HDF5 file; nothing was changed") from None
    try:
        yield handle
    except RuntimeError as exc:  # HDF5's own structures damaged (a B-tree, an address past the end)
        raise DensePredError(f"cannot read {spec.path}: {' '.join(str(exc).split())}; the HDF5 file is damaged; "
                             "nothing was changed") from None
    finally:
        handle.close()
