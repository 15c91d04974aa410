"""A folder of 2D TIFF files, one per section, as a volume: how FIB-SEM and serial-section EM
acquisitions, TrakEM2 and CATMAID exports and Fiji's "Image Sequence" store a stack.

The input is the folder (every ``.tif``/``.tiff`` file in it) or a pattern in it
(``sections/z*.tif``), in natural order: ``z9.tif`` before ``z10.tif``; hidden files (macOS's
``._z0001.tif`` beside each file on a network share) are not sections. Section ``i`` is the
``i``-th file. Each file is read by its own strips or tiles (tifffile's zarr view), as a
single compressed TIFF is (:mod:`.tiff_chunks`, whose bounded cache of decoded chunks keeps
the sections of recent tiles), or memory-mapped when uncompressed; files are opened as tiles
reach them, at most :func:`open_files` at once. Every section must have the first one's shape
and dtype: the first that does not stops the run in one line naming it.
"""

from __future__ import annotations

import glob
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DensePredError
from .reading import BoxArray
from .tiff_chunks import TiffChunks

SUFFIXES = (".tif", ".tiff")
OPEN_FILES = 4096  # sections held open at once (a tile reaches one file per section), within a quarter of the
# process's limit of open files (each holds one)


def is_pattern(path: str | Path) -> bool:
    """Whether ``path`` is a pattern of sections: ``*``, ``?`` or ``[`` in its file name, and no
    file of that very name (``sample[1].tif`` names itself where it exists). Its folders are
    names, never patterns: ``run 10?30/z*.tif`` looks in the folder ``run 10?30``."""
    path = Path(path)
    return glob.has_magic(path.name) and not path.exists()


def section_files(path: str | Path) -> list[Path]:
    """The sections of a folder or pattern, in natural order (no hidden files)."""
    path = Path(path)
    if is_pattern(path):
        found = [Path(p) for p in glob.glob(str(Path(glob.escape(str(path.parent))) / path.name))]
    elif path.is_dir():
        found = [p for p in path.iterdir() if p.suffix.lower() in SUFFIXES]
    else:
        return []
    return sorted((p for p in found if p.is_file() and not p.name.startswith(".")), key=natural)


def natural(path: Path) -> list[Any]:
    """Sort key: runs of digits as numbers (``z9`` before ``z10``), the rest as text."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def holds_sections(folder: Path) -> bool:
    """Whether ``folder`` holds TIFF files (not hidden ones)."""
    try:
        return any(p.suffix.lower() in SUFFIXES and not p.name.startswith(".") for p in folder.iterdir())
    except OSError:
        return False


class Sections(BoxArray):
    """The files as a ``(Z, Y, X)`` array (``(Z, Y, X, S)`` for colour sections), read by
    boxes: ``shape``, ``dtype``, ``chunks`` (one section by the first file's strips or tiles)
    and ``array[box]``; safe to read from several threads."""

    def __init__(self, files: list[Path], where: str):
        self.files, self.where = files, where
        first = _open_page(files[0])
        self.page_shape, self.dtype = tuple(int(n) for n in first.shape), np.dtype(first.dtype)
        self.shape = (len(files), *self.page_shape)
        self.ndim = len(self.shape)
        self.mapped = isinstance(first, np.memmap)  # uncompressed: read in place, nothing to keep
        self.chunks = (1, *(int(n) for n in getattr(first, "chunks", self.page_shape)))
        self._open: OrderedDict[int, Any] = OrderedDict()
        self._keep_open = open_files()
        self._lock = threading.Lock()

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        first, rest = key[0], key[1:]
        if isinstance(first, int | np.integer):
            return np.asarray(self._section(int(first))[rest])
        sections = [np.asarray(self._section(z)[rest]) for z in range(*first.indices(self.shape[0]))]
        if not sections:
            return np.asarray(self._section(0)[rest])[:0]
        return np.stack(sections)

    def _section(self, z: int) -> Any:
        """Section ``z`` (negative counts from the end) as an array of its strips or tiles."""
        z = range(self.shape[0])[z]
        with self._lock:
            if z in self._open:
                self._open.move_to_end(z)
                return self._open[z]
        page = _open_page(self.files[z])
        if tuple(page.shape) != self.page_shape or np.dtype(page.dtype) != self.dtype:
            raise DensePredError(f"{self.files[z]} is a section of shape {list(page.shape)} {np.dtype(page.dtype)}, "
                                 f"but {self.files[0].name}, the first section of {self.where}, is "
                                 f"{list(self.page_shape)} {self.dtype}; every section must be alike (replace or move "
                                 "that file, then --resume)")
        with self._lock:
            if z in self._open:  # another thread opened it meanwhile
                _close(page)
                return self._open[z]
            self._open[z] = page
            while len(self._open) > self._keep_open:
                _close(self._open.popitem(last=False)[1])
        return page


def open_files() -> int:
    """How many sections stay open: :data:`OPEN_FILES`, or a quarter of the open files the
    process may hold (at least 16)."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to read; its C runtime's default is 512 files
        return min(OPEN_FILES, 128)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return OPEN_FILES if soft == resource.RLIM_INFINITY else min(OPEN_FILES, max(16, soft // 4))


def _open_page(path: Path) -> Any:
    """A file's first image as a zarr array of its strips or tiles; one line when the file is no
    single 2D image (grey or colour)."""
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tiff:
            axes = tiff.series[0].axes if tiff.series else ""
        if axes not in ("YX", "YXS"):
            raise DensePredError(f"{path} is not one 2D section (its axes are {axes or 'none'}); a folder of TIFF "
                                 "files is read as one 2D image per file (a stack in one file is given as that file)")
        try:
            return tifffile.memmap(path, mode="r")  # uncompressed: the bytes a box needs, from the page cache
        except ValueError:  # compressed or tiled: by its strips or tiles
            return zarr.open_array(tifffile.imread(path, aszarr=True, series=0, level=0), mode="r")
    except DensePredError:
        raise
    except (OSError, ValueError, KeyError, IndexError, tifffile.TiffFileError) as exc:
        raise DensePredError(f"cannot read the section {path}: {exc}") from None


def _close(page: Any) -> None:
    close = getattr(getattr(page, "store", None), "close", None)
    if close is not None:
        close()


def open_sections(files: list[Path], where: str) -> Sections | TiffChunks:
    """Sections as one array, axes ``ZYX`` or ``ZYXS``: memory-mapped where the first file is
    uncompressed, else read by their strips or tiles with :class:`TiffChunks`' cache of
    recent chunks."""
    if not files:
        raise DensePredError(f"{where} names no TIFF files; a folder of sections holds .tif or .tiff files, one "
                             "2D image each (or give a pattern: sections/z*.tif)")
    sections = Sections(files, where)
    return sections if sections.mapped else TiffChunks(where, array=sections)


__all__ = ["Sections", "holds_sections", "is_pattern", "natural", "open_sections", "section_files"]
