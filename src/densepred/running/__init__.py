"""Layer 5, running: prediction, file jobs with their resume record, training, profiling.

Split by role; each subpackage's docstring names its modules:

* :mod:`.planning` - cutting a prediction into pieces that fit (tiles, windows, memory, devices)
* :mod:`.compute` - computing a piece (own nets' tiles, models' windows) and writing it
* :mod:`.executors` - running pieces on a Dask cluster (client and worker side)
* :mod:`.jobs` - ``predict_dense`` and ``densepred predict``: output, record, resume, pyramid
* :mod:`.training` - ``densepred train``
* :mod:`.profiling` - ``densepred profile``

Progress bars and cancelling (:mod:`densepred.progress`) and the read/compute/write threads
(:mod:`densepred.pipeline`) are foundation modules below every layer.
"""

from ..networks.devices import resolve_device
from .compute.tiles import predict_tiles
from .jobs import JobResult, PredictJob, class_probabilities, output_origin, predict_dense, predict_to_file
from .profiling import ProfileResult, profile, profile_model
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
    "profile_model",
    "resolve_device",
    "train",
]
