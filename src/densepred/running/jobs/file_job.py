"""``densepred predict``: a volume on disk to a prediction on disk, resumable after a crash.

One job for every model and executor. The model's kind decides only how the job is planned:
densepred's own nets (:func:`.own_job.plan_net`, pieces are tiles) or a model written
elsewhere (:func:`.model_job.plan_model`, pieces are output shards). Both give a
:class:`~.job.PlannedJob`, which :func:`run_planned` runs in this process or on a Dask cluster
(:mod:`.cluster_job`): everything is checked before anything is created, the run record beside
the output (:mod:`.record`) names the pieces done, and the output's life cycle is shared
(:mod:`.lifecycle`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from ...errors import DensePredError
from ...io import ArraySpec, open_output
from ..executors.cluster import ClusterTarget, connected, worker_memory_limit
from .cluster_job import check_cluster_output, run_blocks, run_pyramid
from .job import JobResult, PlannedJob, PredictJob, check_job, uses_cluster
from .lifecycle import finish, start_output, write_error
from .model_job import plan_model
from .own_job import plan_net
from .pyramid import PyramidFeed, build_pyramid
from .record import read_done

log = logging.getLogger("densepred")


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
    if job.resume and job.overwrite:
        raise DensePredError("--resume and --overwrite exclude each other: continue the output or replace it")
    if client is None and not uses_cluster(job):
        return run_planned(job, *plan_job(job))
    target = ClusterTarget.of(job)
    target.check(client)
    check_cluster_output(ArraySpec.parse(job.output))
    with connected(target, client) as connection:
        job = replace(job, memory_limit=worker_memory_limit(connection, job.memory_limit))
        return run_planned(job, *plan_job(job), client=connection)


def plan_job(job: PredictJob) -> tuple[PlannedJob, dict[str, Any] | None]:
    """The checked plan of ``job`` and, when resuming, the interrupted run's record."""
    return plan_model(job) if job.model is not None or job.model_file is not None else plan_net(job)


def run_planned(job: PredictJob, planned: PlannedJob, previous: dict[str, Any] | None, client: Any = None) -> JobResult:
    """Create (or reopen) the output, compute the missing pieces here or on ``client``'s cluster,
    build the pyramid, mark the output complete."""
    spec, record_dir = planned.out_spec, planned.record_dir
    if previous is not None and previous.get("complete"):
        log.warning("%s is already complete; nothing to do", spec)
        return planned.result(0, planned.pieces())
    if previous is not None:
        output, done = _reopen(planned), read_done(record_dir)
    else:
        output, done = start_output(spec, record_dir, planned.record, job.overwrite, job.resume, planned.create), set()
    skipped = len(done)
    if client is not None:
        output.close()
        computed = run_blocks(client, planned.blocks(job, client, done), done, record_dir, job, spec)
        output = open_output(spec)
        if planned.layout is not None:
            run_pyramid(client, planned.layout, planned.encoding.argmax, spec, record_dir, job.progress)
    else:
        feed = _pyramid_feed(planned, output)
        try:
            computed = planned.compute(job, output, done)
        except OSError as exc:
            raise write_error(exc, spec, f"{len(read_done(record_dir))} of {planned.pieces()} pieces done") from None
        finally:
            output.after_write = None
            if feed is not None:
                feed.close()
        _local_pyramid(job, planned, output)
    finish(output, record_dir, planned.record, spec)
    return planned.result(computed, skipped)


def _pyramid_feed(planned: PlannedJob, output: Any) -> PyramidFeed | None:
    """The levels above level 0 built from each box as it is written (what it leaves undone,
    :func:`_local_pyramid` builds after the last piece)."""
    layout = planned.layout
    if layout is None or len(layout.levels) == 1:
        return None
    feed = PyramidFeed(output, layout.levels, layout.tile, planned.encoding.argmax, planned.record_dir)
    output.after_write = feed.add
    return feed


def _local_pyramid(job: PredictJob, planned: PlannedJob, output: Any) -> None:
    layout = planned.layout
    if layout is None or len(layout.levels) == 1:
        return
    try:
        build_pyramid(output, layout.levels, layout.tile, planned.encoding.argmax, planned.record_dir, job.progress)
    except OSError as exc:
        raise write_error(exc, planned.out_spec, "all pieces done, the pyramid levels are not") from None


def _reopen(planned: PlannedJob) -> Any:
    """The interrupted run's output, if it is still what its record says."""
    output = open_output(planned.out_spec)
    expected = tuple(planned.record["output"]["shape"])
    if output.shape != expected or output.dtype != planned.encoding.stored_dtype:
        output.close()
        raise DensePredError(f"{planned.out_spec} has shape {list(output.shape)} and dtype {output.dtype}, not what "
                             "its run record says; start again with --overwrite")
    return output
