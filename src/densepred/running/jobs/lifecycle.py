"""The steps every prediction job takes with its output and run record, whatever the model.

Nothing is created or deleted before every check has passed; the record is written before
the output and removed first, so a record never calls a half-deleted output complete;
``--overwrite`` replaces only an output a densepred run wrote
(:func:`densepred.io.output_checks.check_replaceable`); a finished output is marked complete
in its attributes and its record, and the progress logs go.
"""

from __future__ import annotations

import errno
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import DensePredError
from ...io import ArraySpec, output_exists, remove_output
from ...io.output_checks import check_replaceable
from .record import RUN_JSON, provenance, read_record, write_record

log = logging.getLogger("densepred")

# progress logs and scratch folders a finished run removes from its record folder
PROGRESS_LOGS = ("done.log", "blocks.log", "rows.log", "slabs.log")
SCRATCH = ("blend",)


def resumable_record(spec: ArraySpec, record_dir: Path) -> dict[str, Any] | None:
    """The interrupted run's record; None when there is nothing to resume (a fresh start).

    A record folder without ``run.json`` is a run killed before it began, and a record whose
    output is gone (deleted by the user) describes nothing: both start afresh. An output
    without any record was not written by ``densepred predict`` and is not touched.
    """
    record = read_record(record_dir)
    if record is None and output_exists(spec) and not record_dir.exists():
        raise DensePredError(f"cannot resume {spec}: it has no run record ({record_dir / RUN_JSON}), so it was not "
                             "written by densepred predict; choose another output, or pass --overwrite")
    if record is not None and not output_exists(spec):
        log.warning("%s named in the run record %s does not exist; starting afresh", spec, record_dir)
        return None
    if record is None:
        log.info("nothing to resume for %s; starting", spec)
    return record


def start_output(spec: ArraySpec, record_dir: Path, record: dict[str, Any], overwrite: bool, resume: bool,
                 create: Callable[[], Any]) -> Any:
    """Create the run record, then the output (``create()``, marked incomplete), replacing old
    ones if allowed.

    A record without its output is this project's own leftover (a run killed while creating
    it, or an output the user deleted) and is cleared; an existing output is replaced only
    with ``--overwrite`` (or when resuming a run killed before its record was written), and
    only if densepred wrote it. If creating the output fails, the new record goes too.
    """
    exists = output_exists(spec)
    if exists and not (overwrite or resume):
        raise DensePredError(f"{spec} already exists; pass --overwrite to replace it, or --resume to "
                             "finish an interrupted run")
    if exists:
        check_replaceable(spec)
    # the record goes first: a crash while the old output is being deleted must not leave
    # a half-deleted output that a record still calls complete
    shutil.rmtree(record_dir, ignore_errors=True)
    if exists:
        remove_output(spec, checked=True)
    try:
        record_dir.mkdir(parents=True)
    except OSError as exc:
        raise DensePredError(f"cannot create {record_dir}: {exc.strerror}") from None
    try:
        write_record(record_dir, record)
        return create()
    except BaseException:
        shutil.rmtree(record_dir, ignore_errors=True)
        raise


def finish(output: Any, record_dir: Path, record: dict[str, Any], spec: ArraySpec) -> None:
    """Mark the output and its record complete, and remove the progress logs."""
    try:
        output.set_attributes({"densepred": {"complete": True, **provenance(record)}})
        output.close()
        record["complete"] = True
        write_record(record_dir, record)
        for name in (*PROGRESS_LOGS, *(p.name for p in record_dir.glob("level*.log"))):
            (record_dir / name).unlink(missing_ok=True)
        for name in SCRATCH:
            shutil.rmtree(record_dir / name, ignore_errors=True)
    except OSError as exc:
        raise write_error(exc, spec, "all tiles done, the completion mark is not") from None


def write_error(exc: OSError, spec: ArraySpec, progress: str) -> DensePredError:
    why = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return DensePredError(f"writing {spec} failed: {why}; the output is incomplete ({progress}); fix the cause "
                          "and rerun with --resume")
