"""densepred: fast, exact dense prediction of images and volumes with convolutional networks.

The package is layered; a layer imports only those below it (checked by import-linter):
``geometry`` (plain integers) < ``config`` < ``networks`` (torch) and ``io`` (files, no torch)
< ``running`` (prediction, jobs, training, profiling) < ``interfaces`` (CLI, demo).
``errors``, ``files``, ``system``, ``cgroups``, ``progress`` (bars, log lines, cancelling) and ``pipeline``
(reading, computing and writing at the same time) are the foundation every layer may use.

Example:
    >>> import densepred
    >>> cfg = densepred.load_config("examples/neuro3d.toml")          # doctest: +SKIP
    >>> net = densepred.build_net(cfg)                                 # doctest: +SKIP
    >>> probs = densepred.predict_dense(net, volume, mirror=True)      # doctest: +SKIP
"""

# glibc malloc settings for fast, bounded CPU inference, before any library starts a thread
# (threads started later would keep arenas of their own), and huge pages for PyTorch's large
# blocks, before its first allocation; DENSEPRED_NO_MALLOC_TUNING=1 opts out of both
from .system import request_huge_pages, tune_cpu_allocator

tune_cpu_allocator()
request_huge_pages()

from .config import Config, LayerSpec, NetworkConfig, PredictionConfig, config_from_dict, load_config  # noqa: E402
from .errors import Cancelled, ConfigError, DensePredError  # noqa: E402
from .geometry import Geometry  # noqa: E402
from .networks import (  # noqa: E402
    DenseEngine,
    DenseNet,
    ForeignNet,
    TilingContract,
    build_net,
    create_prediction_net,
    create_predncnn,
    from_bioimageio,
    from_torch,
)
from .running import (  # noqa: E402
    JobResult,
    PredictJob,
    ProfileResult,
    TrainResult,
    class_probabilities,
    predict_dense,
    predict_to_file,
    profile,
    profile_model,
    train,
)

# ELEKTRONN's names, for users coming from it
predictDense = predict_dense

__version__ = "0.1.0"

__all__ = [
    "Cancelled",
    "Config",
    "ConfigError",
    "DenseEngine",
    "DenseNet",
    "DensePredError",
    "ForeignNet",
    "Geometry",
    "JobResult",
    "LayerSpec",
    "NetworkConfig",
    "PredictJob",
    "PredictionConfig",
    "ProfileResult",
    "TilingContract",
    "TrainResult",
    "__version__",
    "build_net",
    "class_probabilities",
    "config_from_dict",
    "create_prediction_net",
    "create_predncnn",
    "from_bioimageio",
    "from_torch",
    "load_config",
    "predictDense",
    "predict_dense",
    "predict_to_file",
    "profile",
    "profile_model",
    "train",
]
