"""One run per output (and one training per save_dir) at a time.

Two runs writing one output (a job submitted twice, ``--overwrite`` started while the first run
still writes, a napari task beside a command) would delete each other's files, interleave two
networks' tiles in one output and both report success. So a run holds an exclusive lock on
``.<record folder>.lock`` beside the output (:func:`~densepred.io.output_checks.record_folder`)
from before it reads the run record until its output is finished, and a second run is refused
in one line that names the first (process, host, start time). Two trainings into one
``save_dir`` would overwrite each other's checkpoints and history the same way: a training
holds ``<save_dir>/.<name>.train.lock`` (:func:`exclusive`).

The lock is the operating system's (``flock``): it goes with the process that holds it, so a
run killed with ``kill -9`` or lost with its node never blocks the next one; the file it leaves
is only a name. A finished run removes the file while it still holds the lock, and a run that
locked a file another run removed at that moment locks the new one instead. Where the file
system (or the operating system) has no locks, the run goes on unlocked and says so in the
log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import DensePredError
from .arrays import ArraySpec
from .output_checks import record_folder

try:
    import fcntl
except ImportError:  # not a POSIX system: no flock, runs go unlocked
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("densepred")


def lock_path(spec: ArraySpec) -> Path:
    """The lock file of the output ``spec``: hidden, beside it."""
    record = record_folder(spec)
    return record.with_name(f".{record.name}.lock")


def output_lock(spec: ArraySpec) -> contextlib.AbstractContextManager[None]:
    """Hold the output's lock while the block runs; refuse in one line if another run holds it."""
    return exclusive(lock_path(spec), f"{spec} is being written by another densepred run")


@contextlib.contextmanager
def exclusive(path: Path, busy: str) -> Iterator[None]:
    """Hold the lock file ``path`` while the block runs; refuse in one line, ``busy`` followed
    by the holder, if another process holds it."""
    fd = _acquire(path, busy)
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                path.unlink()  # while still locked: a run that opened it now finds it gone and retries
            os.close(fd)


def _acquire(path: Path, busy: str) -> int | None:
    if fcntl is None:
        log.info("this system has no flock; %s is not locked", path)
        return None
    while True:
        fd = _open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 400, 0).decode(errors="replace").strip() or "a process that has not said which"
            os.close(fd)
            raise DensePredError(f"{busy} ({holder}); wait for it to end, or stop it first (--resume then "
                                 "continues it)") from None
        except OSError as exc:
            os.close(fd)
            log.info("the file system cannot lock %s (%s); running unlocked", path, exc.strerror)
            return None
        if _still_named(fd, path):
            _say_who(fd)
            return fd
        os.close(fd)  # removed by a run that finished just now: lock the file that has the name now


def _open(path: Path) -> int:
    """The lock file, created if need be; one another user left (mode 0644) opens read-only,
    which ``flock`` takes as well."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        try:
            return os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise DensePredError(f"cannot open the lock file {path}: {exc.strerror}") from None
    except OSError as exc:
        raise DensePredError(f"cannot create the lock file {path}: {exc.strerror}") from None


def _still_named(fd: int, path: Path) -> bool:
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _say_who(fd: int) -> None:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    text = f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode()
    with contextlib.suppress(OSError):  # a file opened read-only keeps the last holder's words
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
