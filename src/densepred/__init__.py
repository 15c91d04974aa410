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
import importlib
from typing import TYPE_CHECKING, Any

from .system import request_huge_pages, tune_cpu_allocator

tune_cpu_allocator()
request_huge_pages()

# The public names are imported when first used (PEP 562), so ``densepred --help``, ``--version``
# and a mistake in the arguments answer without loading torch; ``import densepred`` then
# ``densepred.predict_dense`` reads as before.
_EXPORTS = {
    **dict.fromkeys(("Config", "LayerSpec", "NetworkConfig", "PredictionConfig", "config_from_dict", "load_config"),
                    "config"),
    **dict.fromkeys(("Cancelled", "ConfigError", "DensePredError"), "errors"),
    "Geometry": "geometry",
    **dict.fromkeys(("DenseEngine", "DenseNet", "ForeignNet", "TilingContract", "build_net", "create_prediction_net",
                     "create_predncnn", "from_bioimageio", "from_torch"), "networks"),
    **dict.fromkeys(("JobResult", "PredictJob", "ProfileResult", "TrainResult", "class_probabilities", "predict_dense",
                     "predict_to_file", "profile", "profile_model", "train"), "running"),
}
_ALIASES = {"predictDense": "predict_dense"}  # ELEKTRONN's names, for users coming from it
_SUBPACKAGES = ("cgroups", "config", "errors", "files", "geometry", "interfaces", "io", "networks", "pipeline",
                "progress", "running", "system")

if TYPE_CHECKING:
    from .config import Config, LayerSpec, NetworkConfig, PredictionConfig, config_from_dict, load_config
    from .errors import Cancelled, ConfigError, DensePredError
    from .geometry import Geometry
    from .networks import (
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
    from .running import (
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

    predictDense = predict_dense


def __getattr__(name: str) -> Any:
    target = _ALIASES.get(name, name)
    if target in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[target]}", __name__), target)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'densepred' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
