"""``densepred profile``: the fastest tile (or a model's window) that fits in memory, measured.

* :mod:`.profiler` - :func:`profile`: runs the walk and saves the results
* :mod:`.model_profile` - :func:`profile_model`: a model written elsewhere's exact windows
* :mod:`.walk` - which tile shapes to measure, and when to stop (pure arithmetic)
* :mod:`.worker` - the measuring process
* :mod:`.report` - rows, ``profile.csv``, ``profile.png`` and the config update
"""

from .model_profile import ModelProfile, profile_model
from .profiler import profile
from .report import CSV_COLUMNS, PROFILE_MODES, ProfileResult, ProfileRow, save_profile, write_prediction_settings
from .walk import tile_walk
from .worker import matmul_peak

__all__ = [
    "CSV_COLUMNS",
    "PROFILE_MODES",
    "ModelProfile",
    "ProfileResult",
    "ProfileRow",
    "matmul_peak",
    "profile",
    "profile_model",
    "save_profile",
    "tile_walk",
    "write_prediction_settings",
]
