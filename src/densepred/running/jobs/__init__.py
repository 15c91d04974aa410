"""Jobs: a prediction from an input to an output, with its record, resume and overwrite rules.

* :mod:`.job` - :class:`PredictJob` (what ``densepred predict`` is asked) and :class:`JobResult`
* :mod:`.file_job` - :func:`predict_to_file`, the one entry for every model and executor
* :mod:`.own_job` - densepred's own nets: tiles planned, run in this process
* :mod:`.model_job` - models written elsewhere: exact or blended windows, shards recorded
* :mod:`.cluster_job` - either kind's pieces as blocks on a Dask cluster
* :mod:`.in_memory` - :func:`predict_dense`: the result in memory or in an array given
* :mod:`.lifecycle` - creating, resuming, finishing and replacing an output and its record
* :mod:`.record` - the run record beside an output (``run.json``, ``done.log``)
* :mod:`.layout` - an OME-Zarr output's levels, shards and metadata
* :mod:`.pyramid` - the pyramid levels built in this process, resumably
"""

from .file_job import predict_to_file
from .in_memory import class_probabilities, output_origin, predict_dense, predict_foreign
from .job import JobResult, PredictJob

__all__ = ["JobResult", "PredictJob", "class_probabilities", "output_origin", "predict_dense", "predict_foreign",
           "predict_to_file"]
