"""Layer 5, running: prediction, file jobs with their resume record, training, profiling.

* :mod:`.predict` - :func:`predict_dense` and :func:`class_probabilities`
* :mod:`.pipeline` - reading, computing and writing tiles at the same time
* :mod:`.devices` - choosing a device and the memory a tile may use on it
* :mod:`.file_job` - ``densepred predict``: a volume on disk to a prediction on disk
* :mod:`.run_record` - the record beside an output that makes a run resumable
* :mod:`.distributed`, :mod:`.block_task` - the same job on a Dask cluster (client and worker side)
* :mod:`.plan` - ``densepred plan``: sizing a job before it runs
* :mod:`.training`, :mod:`.samplers` - ``densepred train``
* :mod:`.profiling` - ``densepred profile``
"""

from .devices import resolve_device
from .file_job import JobResult, PredictJob, predict_to_file
from .predict import class_probabilities, output_origin, predict_dense, predict_tiles
from .profiling import ProfileResult, profile
from .training import TrainResult, train

__all__ = [
    "JobResult",
    "PredictJob",
    "ProfileResult",
    "TrainResult",
    "class_probabilities",
    "output_origin",
    "predict_dense",
    "predict_tiles",
    "predict_to_file",
    "profile",
    "resolve_device",
    "train",
]
