"""Layer 2, configuration: TOML files to validated, frozen dataclasses (and edits that keep comments).

* :mod:`.schema` - the dataclasses and the geometry of the network a config describes
* :mod:`.parse` - :func:`load_config`: reading and validating, one :class:`ConfigError` per mistake
* :mod:`.toml_edit` - changing a config file in place with tomlkit
* :mod:`.safe_python` - settings from a Python config file, evaluated without running it
* :mod:`.elektronn` - an ELEKTRONN 1 config as a densepred config
"""

from .parse import config_from_dict, load_config, per_axis
from .schema import (
    ACTIVATIONS,
    MODES,
    Config,
    DataPair,
    LayerSpec,
    NetworkConfig,
    PredictionConfig,
    TrainingConfig,
    network_geometry,
)
from .toml_edit import set_prediction_settings, set_values

__all__ = [
    "ACTIVATIONS",
    "MODES",
    "Config",
    "DataPair",
    "LayerSpec",
    "NetworkConfig",
    "PredictionConfig",
    "TrainingConfig",
    "config_from_dict",
    "load_config",
    "network_geometry",
    "per_axis",
    "set_prediction_settings",
    "set_values",
]
