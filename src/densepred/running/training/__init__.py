"""Training: ``densepred train`` (:func:`train`) and the patch samplers that feed it.

* :mod:`.loop` - the training loop, its history and checkpoints
* :mod:`.save_dir` - the "as trained" config, and one training per save_dir at a time
* :mod:`.samplers` - random patches from images and labels, with augmentation
"""

from .loop import TrainResult, read_history, train

__all__ = ["TrainResult", "read_history", "train"]
