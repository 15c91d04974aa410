"""Training: ``densepred train`` (:func:`train`) and the patch samplers that feed it.

* :mod:`.loop` - the training loop and its checkpoints
* :mod:`.history` - ``history.csv`` and ``history.png``
* :mod:`.save_dir` - the "as trained" config, and one training per save_dir at a time
* :mod:`.samplers` - random patches from images and labels, with augmentation
"""

from .history import read_history
from .loop import TrainResult, train

__all__ = ["TrainResult", "read_history", "train"]
