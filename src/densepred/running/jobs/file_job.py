"""``densepred predict``: a volume on disk to a prediction on disk, resumable after a crash.

One job for every model and executor. The model's kind decides only how the job is planned:
densepred's own nets (:func:`.own_job.plan_net`, pieces are tiles) or a model written
elsewhere (:func:`.model_job.plan_model`, pieces are output shards). Both give a
:class:`~.job.PlannedJob`, which :func:`run_planned` runs in this process or on a Dask cluster
(:mod:`.cluster_job`), with one life cycle for the output and the run record beside it
(:mod:`densepred.io.run_record`):

* nothing is created or deleted before every check has passed;
* one run writes an output at a time (:mod:`densepred.io.run_lock`);
* the record is written before the output and removed first, so a record never calls a
  half-deleted output complete;
* ``--overwrite`` replaces only an output a densepred run wrote
  (:func:`densepred.io.output_checks.check_replaceable`);
* a finished output is marked complete in its attributes and its record, and the progress
  logs go.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from ...errors import DensePredError
from ...io import ArraySpec, create_output, open_output, output_exists
from ...io.arrays import spec_text
from ...io.done_ids import DoneIds
from ...io.output_checks import check_replaceable, clear_deleted, move_aside, set_aside
from ...io.outputs import check_levels
from ...io.pyramid import PyramidFeed
from ...io.run_lock import output_lock
from ...io.run_record import provenance, read_done, write_error, write_record
from ...networks.memory_budget import bytes_limit
from ..compute.window_options import python_ints
from ..executors.cluster import ClusterTarget, connected, worker_memory_limit
from .cluster_job import check_cluster_output, run_blocks, run_pyramid
from .job import COUNTS, JobResult, PlannedJob, PredictJob, check_job
from .model_job import plan_model
from .own_job import plan_net

log = logging.getLogger("densepred")

# progress logs and scratch folders a finished run removes from its record folder
PROGRESS_LOGS = ("done.log", "blocks.log", "rows.log", "slabs.log")
SCRATCH = ("blend",)


def predict_to_file(job: PredictJob, client: Any = None) -> JobResult:
    """Run a prediction job: check everything, create (or reopen) the output, compute what is
    missing, mark it complete.

    With ``client`` (a ``distributed.Client``), or ``job.workers``, ``job.scheduler`` or
    ``job.scheduler_file``, the pieces are computed on a Dask cluster, which is reached before
    anything is created; the default tile or window is then sized to its workers' memory.

    Example:
        >>> job = PredictJob("net.toml", "raw.h5:raw", "out.zarr", mirror=True)  # doctest: +SKIP
        >>> predict_to_file(job).shape                                           # doctest: +SKIP
    """
    check_job(job)
    job = replace(job, memory_limit=bytes_limit(job.memory_limit),  # 8e9 and NumPy integers as whole bytes
                  input=spec_text(job.input), output=spec_text(job.output),  # a pathlib.Path as its path
                  **{name: int(getattr(job, name)) for name in COUNTS if getattr(job, name) is not None},
                  tiles_per_block=python_ints(job.tiles_per_block))
    if job.resume and job.overwrite:
        raise DensePredError("--resume and --overwrite exclude each other: continue the output or replace it")
    if client is None and job.workers is None and job.scheduler is None and job.scheduler_file is None:
        return run_planned(job, plan_job(job))
    target = ClusterTarget.of(job)
    target.check(client)
    check_cluster_output(ArraySpec.output(job.output))
    with connected(target, client) as connection:
        job = replace(job, memory_limit=worker_memory_limit(connection, job.memory_limit))
        return run_planned(job, plan_job(job), client=connection)


def plan_job(job: PredictJob) -> PlannedJob:
    """The checked plan of ``job``."""
    return plan_model(job) if job.model is not None or job.model_file is not None else plan_net(job)


def run_planned(job: PredictJob, planned: PlannedJob, client: Any = None) -> JobResult:
    """Create (or reopen) the output, compute the missing pieces here or on ``client``'s cluster,
    build the pyramid, mark the output complete; refused while another run writes the output
    (:mod:`densepred.io.run_lock`)."""
    with output_lock(planned.out_spec):
        return _run(job, planned, client)


def _run(job: PredictJob, planned: PlannedJob, client: Any) -> JobResult:
    spec, record_dir, previous = planned.out_spec, planned.record_dir, planned.previous
    if previous is not None and previous.get("complete"):
        log.warning("%s is already complete; nothing to do", spec)
        return planned.result(0, planned.pieces)
    if previous is not None:
        done = read_done(record_dir)
        output = _reopen(planned, done)
    else:
        output, done = _start_output(planned, job.overwrite or job.resume), DoneIds()
    with clearing_deleted(spec):
        return _compute(job, planned, output, done, client)


def _compute(job: PredictJob, planned: PlannedJob, output: Any, done: DoneIds, client: Any) -> JobResult:
    spec, record_dir = planned.out_spec, planned.record_dir
    skipped = len(done)
    if client is not None:
        output.close()
        computed = run_blocks(client, planned.work.blocks(job, client, done), done, record_dir, job, spec)
        output = open_output(spec)
        if planned.layout is not None:
            run_pyramid(client, planned.layout, planned.encoding.argmax, spec, record_dir, job.progress)
    else:
        feed, complete = _pyramid_feed(planned, output), False
        try:
            computed, complete = planned.work.compute(job, output, done), True
        except OSError as exc:
            raise write_error(exc, spec, f"{len(read_done(record_dir))} of {planned.pieces} pieces done") from None
        finally:
            output.after_write = None
            if feed is not None:
                feed.finish(complete, job.progress, spec)
    _finish(output, planned)
    return planned.result(computed, skipped)


@contextlib.contextmanager
def clearing_deleted(spec: ArraySpec) -> Iterator[None]:
    """Delete the old output and record set aside by :func:`_start_output` (and any a killed
    run left, :func:`~densepred.io.output_checks.clear_deleted`) in a thread while the block
    runs, rather than before the first tile; wait for it at the end."""
    thread = threading.Thread(target=clear_deleted, args=(spec,), name="densepred-delete", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def _start_output(planned: PlannedJob, replace_old: bool) -> Any:
    """Create the run record, then the output (marked incomplete), replacing old ones if allowed.

    A record without its output is this project's own leftover (a run killed while creating
    it, or an output the user deleted) and is cleared; an existing output is replaced only
    with ``--overwrite`` (or when resuming a run killed before its record was written), and
    only if densepred wrote it. If creating the output fails, the new record goes too.
    """
    spec, record_dir = planned.out_spec, planned.record_dir
    exists = output_exists(spec)
    if exists:
        check_replaceable(spec)  # one densepred did not write is named so, not offered to --overwrite
    if exists and not replace_old:
        raise DensePredError(f"{spec} already exists; pass --overwrite to replace it, or --resume to "
                             "finish an interrupted run")
    # the record goes first: a crash while the old output is being deleted must not leave
    # a half-deleted output that a record still calls complete. Both are renamed out of the
    # way here and deleted beside the run (clearing_deleted)
    move_aside(record_dir, spec)
    if exists:
        set_aside(spec, checked=True)
    try:
        return _create(planned)
    except Exception:
        clear_deleted(spec)  # what was set aside goes now: no run follows to delete it
        raise


def _create(planned: PlannedJob) -> Any:
    """The new record, then the new output; the record goes again if the output cannot be made."""
    spec, record_dir = planned.out_spec, planned.record_dir
    try:
        record_dir.mkdir(parents=True)
    except OSError as exc:
        raise DensePredError(f"cannot create {record_dir}: {exc.strerror}") from None
    try:
        write_record(record_dir, planned.record)
        return create_output(spec, planned.shape, planned.encoding.stored_dtype, planned.chunks,
                             attributes={"densepred": {"complete": False}}, layout=planned.layout,
                             channel_axis=not planned.encoding.argmax, placement=planned.placement)
    except BaseException:
        shutil.rmtree(record_dir, ignore_errors=True)
        raise


def _finish(output: Any, planned: PlannedJob) -> None:
    """Mark the output and its record complete, and remove the progress logs; not if the input
    changed while the run read it."""
    record_dir, record = planned.record_dir, planned.record
    if planned.input_fingerprint is not None and planned.input_fingerprint() != record["input"]["fingerprint"]:
        output.close()
        raise DensePredError(f"the input {record['input']['spec']} changed while this run read it (its sampled "
                             f"contents differ from those at the start), so {planned.out_spec} may mix two inputs; "
                             "it is left unfinished: run again with --overwrite once the input no longer changes")
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
        raise write_error(exc, planned.out_spec, "all tiles done, the completion mark is not") from None


def _pyramid_feed(planned: PlannedJob, output: Any) -> PyramidFeed | None:
    """The levels above level 0 built from each box as it is written (what it leaves undone,
    :meth:`PyramidFeed.finish` builds after the last piece)."""
    layout = planned.layout
    if layout is None or len(layout.levels) == 1:
        return None
    feed = PyramidFeed(output, layout.levels, layout.tile, planned.encoding.argmax, planned.record_dir)
    output.after_write = feed.add
    return feed


def _reopen(planned: PlannedJob, done: DoneIds) -> Any:
    """The interrupted run's output, if it is still what its record says. A run killed while
    it created the output (its levels or metadata not all there) had written nothing, so with
    no piece done the output is created again."""
    try:
        output = open_output(planned.out_spec, shape=planned.shape)
    except DensePredError:
        if done:
            raise
        log.info("the interrupted run stopped while creating %s; creating it again", planned.out_spec)
        return _start_output(planned, replace_old=True)
    if output.shape != planned.shape or output.dtype != planned.encoding.stored_dtype:
        output.close()
        raise DensePredError(f"{planned.out_spec} has shape {list(output.shape)} and dtype {output.dtype}, not what "
                             "its run record says; start again with --overwrite")
    if planned.layout is not None:
        try:
            check_levels(output, planned.layout, planned.encoding.stored_dtype)
        except DensePredError:
            output.close()
            raise
    return output

