"""Training: ``densepred train`` (:func:`train`) and the patch samplers that feed it.

* :mod:`.loop` - the training loop, its history, checkpoints and the "as trained" config
* :mod:`.samplers` - random patches from images and labels, with augmentation
"""

from .loop import TrainResult, read_history, train

__all__ = ["TrainResult", "read_history", "train"]
