"""``densepred predict``: a volume on disk to a prediction on disk, resumable after a crash.

One entry for every model and executor: densepred's own nets (:mod:`.own_job`) or a model
written elsewhere (:mod:`.model_job`), in this process or on a Dask cluster
(:mod:`.cluster_job`). Each checks everything before it creates anything, keeps a run record
beside the output (:mod:`.record`) and shares the output's life cycle (:mod:`.lifecycle`).
"""

from __future__ import annotations

from typing import Any

from .cluster_job import predict_net_on_cluster
from .job import JobResult, PredictJob, uses_cluster
from .model_job import predict_model_to_file
from .own_job import predict_net_to_file


def predict_to_file(job: PredictJob, client: Any = None) -> JobResult:
    """Run a prediction job: check everything, create (or reopen) the output, compute what is
    missing, mark it complete.

    With ``client`` (a ``distributed.Client``), or ``job.workers``, ``job.scheduler`` or
    ``job.scheduler_file``, the pieces are computed on a Dask cluster.

    Example:
        >>> job = PredictJob("net.toml", "raw.h5:raw", "out.zarr", mirror=True)  # doctest: +SKIP
        >>> predict_to_file(job).shape                                           # doctest: +SKIP
    """
    if job.model is not None or job.model_file is not None:
        return predict_model_to_file(job, client)
    if client is not None or uses_cluster(job):
        return predict_net_on_cluster(job, client)
    return predict_net_to_file(job)
