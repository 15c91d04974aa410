"""The run record beside an output: what a run computes, and which tiles are done.

``<output>.densepred/`` (for ``out.h5:pred``, ``out.h5.pred.densepred/``) holds

* ``run.json`` - what is being computed: input (with a fingerprint of its contents), output,
  network, weights, tiles. A resume whose record differs is refused, so an output never mixes
  two predictions. Written atomically.
* ``done.log`` - one line per finished tile, ``<tile id> <crc32 of the id, 8 hex digits>``.

**Durability.** A tile's line is appended only after its data was written *and made
durable* (:meth:`densepred.io.OutputArray.sync`: fsync of the HDF5 file or of the zarr chunk
files, msync of a memory map), and the line itself is fsynced. So after a crash or a power
loss every tile the log names is on disk. A line torn by a crash fails its checksum and is
ignored; before appending, the log is cut back to its last complete line, so a new entry can
never merge with a torn one ("17" + "3" is not tile 173).

A memory-mapped output (NumPy, TIFF, MRC) is synced in groups instead
(:meth:`densepred.io.OutputArray.defer_syncs`): tiles finished within ``COMMIT_SECONDS`` of
each other wait in the log until one ``msync`` of the whole map has made them all durable,
then their lines are appended. Tiles whose boxes share pages (rows of a tile narrower than
the image) then cost one write of each page to disk, not one per tile.
"""

from __future__ import annotations

import array
import errno
import hashlib
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..errors import DensePredError
from ..files import atomic_write_text
from .arrays import ArraySpec
from .done_ids import DoneIds
from .output_checks import check_replaceable, output_exists

log = logging.getLogger("densepred")

COMMIT_SECONDS = 1.0  # a group of tiles made durable by one commit (see the module docstring)

RECORD_VERSION = 5  # 3: a model run's done.log names shards, record folders percent-encode keys; 4: precision;
# 5: a stream's output shards cut across its tile (geometry.stream_shards)
DONE_LOG = "done.log"
CHUNK_IDS = 1 << 16  # ids read from a log before they are set in its bitmap at once
MAX_PIECES = 2**32  # a line naming a piece beyond is not believed (its bitmap alone would pass 512 MB)
RUN_JSON = "run.json"
RECORDED_MODES = ("mfp", "dilated", "naive", "stream", "exact", "blend")  # the engines own nets and models ran
POSITIVE = {"input_tile": "1 to 3 positive integers", "window": "1 to 3 positive integers",
            "batch_size": "a positive integer"}
SECTIONS = (("input", "input"), ("network", "network config or weights"),
            ("tiles", "tiling (tile, mode, batch size, mirror or region)"), ("output", "output format"))


def resumable_record(spec: ArraySpec, record_dir: Path) -> dict[str, Any] | None:
    """The interrupted run's record; None when there is nothing to resume (a fresh start).

    A record folder without ``run.json`` is a run killed before it began, and a record whose
    output is gone (deleted by the user) describes nothing: both start afresh. An output
    without any record was not written by ``densepred predict`` and is not touched.
    """
    record = read_record(record_dir)
    if record is None and output_exists(spec) and not record_dir.exists():
        check_replaceable(spec)  # one densepred did not write is named so (--overwrite would refuse it too)
        raise DensePredError(f"cannot resume {spec}: it has no run record ({record_dir / RUN_JSON}), so which tiles "
                             "are done is unknown; choose another output, or pass --overwrite")
    if record is not None and not output_exists(spec):
        log.warning("%s named in the run record %s does not exist; starting afresh", spec, record_dir)
        return None
    if record is None:
        log.info("nothing to resume for %s; starting", spec)
    return record


def write_error(exc: OSError, spec: ArraySpec, progress: str) -> DensePredError:
    """A failed write of ``spec`` as one line, with what the record says is done."""
    why = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return DensePredError(f"writing {spec} failed: {why}; the output is incomplete ({progress}); fix the cause "
                          "and rerun with --resume")


def done_line(tile_id: int) -> str:
    """One ``done.log`` line: the id and its checksum, so a torn or merged line is never believed."""
    return f"{tile_id} {zlib.crc32(str(tile_id).encode()):08x}\n"


def read_done(record_dir: Path, name: str = DONE_LOG) -> DoneIds:
    """Ids recorded as done; lines without a newline or a matching checksum are ignored."""
    done, chunk, crc32 = DoneIds(), array.array("q"), zlib.crc32
    try:
        with open(Path(record_dir) / name, "rb") as f:
            for line in f:  # a torn last line lacks its newline, so its checksum fails
                head, _, tail = line.partition(b" ")
                if (tail == b"%08x\n" % crc32(head) and head.isdigit() and (head[:1] != b"0" or head == b"0")
                        and int(head) < MAX_PIECES):
                    chunk.append(int(head))
                    if len(chunk) == CHUNK_IDS:
                        done.add_all(np.frombuffer(chunk, np.int64))
                        chunk = array.array("q")
    except FileNotFoundError:
        return done
    done.add_all(np.frombuffer(chunk, np.int64))
    return done


class DoneLog:
    """``done.log`` (or a pyramid level's log) opened for appending durable lines; a torn last
    line is cut off first."""

    def __init__(self, record_dir: Path, name: str = DONE_LOG, commit: Callable[[], None] | None = None):
        """``commit``: makes every write so far durable; given, lines are appended in groups,
        each after one commit (a memory map's ``msync``), not after each tile's own sync."""
        path = Path(record_dir) / name
        self._lock, self._file_lock = threading.Lock(), threading.Lock()
        self._commit, self._pending, self._committed = commit, [], time.monotonic()
        self._file = open(path, "a+b")  # noqa: SIM115 - closed by close()
        self._file.seek(0)
        content = self._file.read()
        complete = content.rfind(b"\n") + 1
        if complete != len(content):
            self._file.truncate(complete)
            os.fsync(self._file.fileno())

    def append(self, tile_id: int) -> None:
        """Append a durable line (from any thread: the pipeline's writers share the log); with a
        ``commit``, the lines waiting are appended at the first append ``COMMIT_SECONDS`` after
        the last commit, by that thread, once it has committed (the other writers go on)."""
        with self._lock:
            self._pending.append(tile_id)
            if self._commit is not None and time.monotonic() - self._committed < COMMIT_SECONDS:
                return
            group, self._pending, self._committed = self._pending, [], time.monotonic()
        self._write(group)

    def _write(self, group: list[int]) -> None:
        if self._commit is not None:
            self._commit()
        with self._file_lock:
            self._file.write("".join(done_line(i) for i in group).encode("ascii"))
            self._file.flush()
            os.fsync(self._file.fileno())

    def flush(self) -> None:
        """Commit and append the lines still waiting (a run's last tiles); raises what the
        commit raises (a disk that failed a write), so the run is not taken for finished."""
        with self._lock:
            group, self._pending = self._pending, []
        if group:
            self._write(group)

    def close(self) -> None:
        """Close the log; lines still waiting for a commit are left out (their tiles are
        computed again on resume)."""
        self._file.close()

    def __enter__(self) -> DoneLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        """Commit the lines still waiting, then close. After a failure (a write that failed, a
        cancel) the tiles finished before it are kept if the disk still takes the commit."""
        try:
            self.flush()
        except OSError:
            if kind is None:
                raise
        finally:
            self.close()


def read_record(record_dir: Path) -> dict[str, Any] | None:
    """The record's ``run.json``, or None when there is none."""
    path = Path(record_dir) / RUN_JSON
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DensePredError(f"cannot read the run record {path}: {exc}; start again with --overwrite") from None
    version = record.get("version")
    if isinstance(version, int) and version < RECORD_VERSION:
        raise DensePredError(f"the run record {path} was recorded by an older densepred (record version {version}, "
                             f"this one reads {RECORD_VERSION}): start afresh with --overwrite")
    if version != RECORD_VERSION:
        raise DensePredError(f"the run record {path} was written by another version of densepred (record "
                             f"version {version}, this one reads {RECORD_VERSION}); start again with --overwrite")
    damage = record_damage(record)
    if damage is not None:
        raise DensePredError(f"the run record {path} is damaged: {damage}; start again with --overwrite")
    return record


def record_damage(record: dict[str, Any]) -> str | None:
    """What in a run record a resume cannot use (its sections, and the tiling it continues with), or None."""
    for section, _ in SECTIONS:
        if not isinstance(record.get(section), dict):
            return f"its {section!r} is {_short(record.get(section))}, not a section"
    if not isinstance(record.get("complete"), bool):
        return f"'complete' is {_short(record.get('complete'))}, not true or false"
    tiles = record["tiles"]
    if tiles.get("mode") not in RECORDED_MODES:
        return f"the tiles' mode is {_short(tiles.get('mode'))}, not one of {', '.join(RECORDED_MODES)}"
    shapes = ("input_tile", "batch_size") if "input_tile" in tiles else ("window",)  # an own net's, a model's
    for key in shapes:
        value = tiles.get(key)
        if not _is_shape([value] if key == "batch_size" else value):
            return f"the tiles' {key} is {_short(value)}, not {POSITIVE[key]}"
    return None


def _is_shape(value: Any) -> bool:
    return (isinstance(value, list) and 1 <= len(value) <= 3
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 < n < 2**31 for n in value))


def write_record(record_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_text(Path(record_dir) / RUN_JSON, json.dumps(record, indent=2) + "\n")


def check_same(previous: dict[str, Any], current: dict[str, Any], spec: ArraySpec) -> None:
    """Refuse a resume that would mix two different predictions in one output."""
    for section, what in SECTIONS:
        before, now = previous.get(section) or {}, current[section]
        if before != now:
            keys = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            details = "; ".join(f"{k}: {_short(before.get(k))} before, {_short(now.get(k))} now" for k in keys[:3])
            raise DensePredError(f"cannot resume {spec}: the {what} differs from the interrupted run ({details}); "
                                 "rerun with the same settings, or start again with --overwrite")
    if previous.get("input_file") != current.get("input_file"):
        log.warning("the input file's size or modification time changed since the interrupted run, but its "
                    "sampled contents are the same; resuming")
    if previous.get("device") != current["device"]:
        log.warning("resuming on %s a run started on %s: the new tiles may differ in the last bits",
                    current["device"], previous.get("device"))


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:12] + "..."


def provenance(record: dict[str, Any]) -> dict[str, Any]:
    """What a finished output's attributes say about how it was made."""
    return {"input": record["input"]["spec"], "network": record["network"], "tiles": record["tiles"]}


def network_hash(cfg: Config) -> str:
    network = dict(cfg.source.get("network", {}))
    return hashlib.sha256(json.dumps(network, sort_keys=True, default=str).encode()).hexdigest()


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()
