"""Layer 3, networks (torch): nets built from configs, the dense engines, weights files.

* :mod:`.build` - :func:`build_net`: valid convolutions, max-pools, an MLP head as convolutions
* :mod:`.engines` - the three dense engines (``naive``, ``mfp``, ``dilated``) on one tile
* :mod:`.weights` - safetensors weights and optimizer state, LAST/BEST file names
* :mod:`.prediction_net` - :func:`create_prediction_net`, ELEKTRONN's ``create_predncnn``
* :mod:`.foreign` - :func:`from_torch`: models written elsewhere; :mod:`.contract` - their tiling
  contract, probed or given (its sizes and output scale: :mod:`.contract_sizes`), and
  :mod:`.contract_cache` - its cache on disk
* :mod:`.loading`, :mod:`.model_files` - a model from its class and weights, or stored whole
  (``torch.export``, TorchScript, ONNX)
* :mod:`.bioimageio`, :mod:`.zoo_description`, :mod:`.processing` - BioImage Model Zoo packages:
  their files, descriptions (formats 0.5 and 0.4) and pre/postprocessing
* :mod:`.precision` - the arithmetic a prediction computes in (float32, tf32, bfloat16, float16);
  :mod:`.precision_speed` - a reduced precision measured slower than float32, remembered
* :mod:`.devices` - choosing a device, and the memory format a model runs fastest in;
  :mod:`.memory_budget` - the memory a run may use on it, and what a tile costs
* :mod:`.elektronn`, :mod:`.elektronn_param` - ELEKTRONN 1 nets and ``.param`` weights, read as data
"""

from .bioimageio import from_bioimageio
from .build import ACTIVATION_FUNCTIONS, DenseNet, build_net
from .engines import ENGINE_MODES, DenseEngine, StackEngine
from .foreign import ForeignNet, TilingContract, from_torch
from .prediction_net import PREDICTION_MODES, create_prediction_net, create_predncnn, valid_tile
from .weights import best_path, config_last, last_path, load_weights, optimizer_path, save_weights

__all__ = [
    "ACTIVATION_FUNCTIONS",
    "ENGINE_MODES",
    "PREDICTION_MODES",
    "DenseEngine",
    "DenseNet",
    "ForeignNet",
    "StackEngine",
    "TilingContract",
    "best_path",
    "build_net",
    "config_last",
    "create_prediction_net",
    "create_predncnn",
    "from_bioimageio",
    "from_torch",
    "last_path",
    "load_weights",
    "optimizer_path",
    "save_weights",
    "valid_tile",
]
