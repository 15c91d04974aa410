"""Jobs: a prediction from an input to an output, with its record, resume and overwrite rules.

* :mod:`.job` - :class:`PredictJob` (what ``densepred predict`` is asked) and :class:`JobResult`
* :mod:`.file_job` - :func:`predict_to_file`, the one entry for every model and executor, and
  the output's life cycle (created, resumed, finished, replaced) with its run record
  (:mod:`densepred.io.run_record`)
* :mod:`.own_job` - densepred's own nets: tiles planned, run in this process
* :mod:`.model_job` - models written elsewhere: exact or blended windows, shards recorded
* :mod:`.cluster_job` - either kind's pieces as blocks on a Dask cluster
* :mod:`.in_memory` - :func:`predict_dense`: the result in memory or in an array given
* :mod:`.out_arrays` - the array given as ``out=``: checked before any work, written box by box
* :mod:`.layout` - an OME-Zarr output's levels, shards and metadata
"""

from .file_job import predict_to_file
from .in_memory import class_probabilities, output_origin, predict_dense, predict_foreign
from .job import JobResult, PredictJob

__all__ = ["JobResult", "PredictJob", "class_probabilities", "output_origin", "predict_dense", "predict_foreign",
           "predict_to_file"]
