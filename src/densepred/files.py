"""Writing files safely: atomic replacement, durable writes, and the permissions users expect.

A file is written to a temporary name in its folder, fsynced, given its final mode and
renamed into place, so a reader (or a run killed mid-write) sees the complete old file or
the complete new one. The mode is the one a plain ``open(path, "w")`` would give (0666 less
the umask; usually 0644, so lab-mates on a shared filesystem can read a model), or the
replaced file's own mode. ``tempfile`` alone would leave 0600.

Part of the foundation every layer may use: it imports nothing else of densepred.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


def umask() -> int:
    """The process's umask, read without changing it where Linux allows."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no way to read it but to set it; put it straight back
    os.umask(mask)
    return mask


def mode_for(path: Path) -> int:
    """The permission bits a new version of ``path`` gets: its current ones, else 0666 less the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; on success it is fsynced, given
    :func:`mode_for` and renamed into place, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode_for(path))
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def fsync_folder(folder: str | Path) -> None:
    """Make a rename or a new file in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def cache_folder(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/densepred/<parts>`` (default ``~/.cache``): data densepred can make again."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base, "densepred", *parts)
