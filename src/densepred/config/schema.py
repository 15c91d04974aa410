"""The validated configuration: frozen dataclasses, and the geometry of the network a config describes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..geometry import Geometry, LayerGeometry

ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "silu", "tanh", "sigmoid", "softplus", "linear")
MODES = ("auto", "mfp", "dilated", "naive", "stream")
PRECISIONS = ("float32", "tf32", "bfloat16", "float16")  # the arithmetic a prediction computes in (networks.precision)

Shape = tuple[int, ...]


@dataclass(frozen=True)
class LayerSpec:
    """One valid convolution with an optional max-pool after it (per-axis tuples)."""

    filters: int
    kernel: Shape
    pool: Shape


@dataclass(frozen=True)
class NetworkConfig:
    dims: int
    in_channels: int
    n_classes: int
    activation: str = "relu"
    layers: tuple[LayerSpec, ...] = ()
    mlp: tuple[int, ...] = ()
    output_kernel: Shape = ()
    dropout: float = 0.0
    batchnorm: bool = False
    patch_size: Shape | None = None
    class_names: tuple[str, ...] = ()  # optional, one per class: channel names of outputs


@dataclass(frozen=True)
class PredictionConfig:
    tile_shape: Shape | None = None
    mode: str = "auto"
    batch_size: int | None = None


@dataclass(frozen=True)
class DataPair:
    """One training source: an image (or features) and its labels, as array specs."""

    raw: str
    label: str


@dataclass(frozen=True)
class TrainingConfig:
    data: tuple[DataPair, ...] = ()
    validation: tuple[DataPair, ...] = ()
    validation_fraction: float = 0.1
    patch_size: Shape | None = None
    batch_size: int = 8
    steps: int = 1000
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    lr_decay: float = 0.5
    lr_step: int = 1000
    class_weights: tuple[float, ...] | None = None
    ignore_label: int | None = None
    save_every: int = 100
    validate_every: int = 100
    validation_patches: int = 64
    seed: int = 0
    flips: bool = True
    swap_axes: bool = True
    grey_jitter: float = 0.0


@dataclass(frozen=True)
class Config:
    """A validated configuration. ``path`` is the file it came from (None if built in code);
    ``source`` is the parsed document, kept to write the config back out."""

    name: str
    network: NetworkConfig
    prediction: PredictionConfig = field(default_factory=PredictionConfig)
    training: TrainingConfig | None = None
    save_dir: Path | None = None
    path: Path | None = None
    source: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the config are resolved against."""
        return self.path.parent.resolve() if self.path else Path.cwd()


def network_geometry(cfg: NetworkConfig) -> Geometry:
    """The geometry of the network a config describes (dims must be 2 or 3).

    An MLP head becomes convolutions: the first perceptron's kernel is the feature map
    that ``patch_size`` leaves after the last conv layer, later perceptrons are 1x1.
    """
    if cfg.dims == 0:
        raise ConfigError("networks with dims = 0 classify feature vectors and have no geometry")
    ones = (1,) * cfg.dims
    layers, channels = [], cfg.in_channels
    for i, spec in enumerate(cfg.layers):
        layers.append(LayerGeometry(f"conv{i + 1}", spec.kernel, spec.pool, channels, spec.filters))
        channels = spec.filters
    if not cfg.mlp:
        layers.append(LayerGeometry("output", cfg.output_kernel, ones, channels, cfg.n_classes))
        return Geometry(layers)
    assert cfg.patch_size is not None
    feature_map = _mlp_input_shape(layers, cfg.patch_size)
    for i, size in enumerate(cfg.mlp):
        kernel = feature_map if i == 0 else ones
        layers.append(LayerGeometry(f"mlp{i + 1}", kernel, ones, channels, size))
        channels = size
    layers.append(LayerGeometry("output", ones, ones, channels, cfg.n_classes))
    return Geometry(layers)


def _mlp_input_shape(conv_layers: list[LayerGeometry], patch: Shape) -> Shape:
    """The feature map that ``patch`` leaves after the conv layers (the first perceptron's kernel)."""
    if not conv_layers:
        return patch
    conv = Geometry(conv_layers)
    check_plain_patch(conv, patch, "network.patch_size", "the conv layers")
    return conv.plain_output_shape(patch)


def check_plain_patch(geometry: Geometry, patch: Shape, key: str, what: str = "this network") -> None:
    """Raise a :class:`ConfigError` naming the nearest valid sizes unless ``patch`` is a valid
    input of the plain (strided) forward, as training patches must be."""
    if geometry.is_valid(patch, "plain"):
        return
    raise ConfigError(
        f"{key} = {list(patch)} is not a valid input for {what} (every convolution output must be "
        f"divisible by its pool; field of view {list(geometry.fov)}, stride {list(geometry.stride)}); "
        f"nearest valid: {geometry.nearest_valid_text(patch, 'plain')}"
    )
