"""Networks built from a config: valid convolutions, max-pools and an optional MLP head.

Each conv layer is ``conv -> batch norm (optional) -> activation -> max-pool -> dropout``.
An MLP head is built from convolutions (the FCN conversion): the first perceptron is a
convolution whose kernel is the whole feature map of the training patch, later ones are
1x1. The net therefore classifies a training patch exactly like a perceptron would, and it
also slides densely over any larger image.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, NetworkConfig, network_geometry
from ..errors import DensePredError
from ..geometry import Geometry, LayerGeometry
from ..system import available_ram

ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "elu": F.elu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "linear": lambda x: x,
}

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
NORM = {0: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
MAX_POOL = {2: F.max_pool2d, 3: F.max_pool3d}


class Block(nn.Module):
    """``conv/linear -> norm -> activation -> max-pool -> dropout``; the output block has only the first."""

    def __init__(self, transform: nn.Module, activation: str | None, pool: tuple[int, ...],
                 norm: nn.Module | None, dropout: float):
        super().__init__()
        self.transform = transform
        self.norm = norm if norm is not None else nn.Identity()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.activation = activation
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.transform(x))
        if self.activation is not None:
            x = ACTIVATION_FUNCTIONS[self.activation](x)
        if any(p > 1 for p in self.pool):
            x = MAX_POOL[len(self.pool)](x, self.pool, self.pool)  # floor mode: drops no complete window
        return self.drop(x)


class DenseNet(nn.Module):
    """A network built from a :class:`NetworkConfig`.

    ``net(x)`` is the plain strided forward: ``x`` of shape ``(B, C, *S)`` gives logits
    ``(B, n_classes, *out)`` with ``out = (S - FOV) // stride + 1``; each output is the
    prediction for its ``FOV``-sized input window. For ``dims = 0`` nets ``x`` is
    ``(B, features)`` and the result ``(B, n_classes)``.
    """

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        self.geometry: Geometry | None = network_geometry(config) if config.dims else None
        self.blocks = nn.ModuleList(self._make_blocks())
        # prediction defaults, set by create_prediction_net: input tile and dense engine
        self.tile_shape: tuple[int, ...] | None = None
        self.mode: str = "auto"

    def _make_blocks(self) -> list[Block]:
        cfg = self.config
        if cfg.dims == 0:
            sizes = [cfg.in_channels, *cfg.mlp, cfg.n_classes]
            layers = [(nn.Linear(a, b), (1,)) for a, b in itertools.pairwise(sizes)]
        else:
            assert self.geometry is not None
            layers = [(_conv(layer, cfg.dims), layer.pool) for layer in self.geometry.layers]
        blocks = []
        for i, (transform, pool) in enumerate(layers):
            if i == len(layers) - 1:
                blocks.append(Block(transform, None, pool, None, 0.0))
                continue
            out_channels = transform.out_features if cfg.dims == 0 else transform.out_channels
            norm = NORM[cfg.dims](out_channels) if cfg.batchnorm else None
            blocks.append(Block(transform, cfg.activation, pool, norm, cfg.dropout))
        return blocks

    @property
    def n_classes(self) -> int:
        return self.config.n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        for block in self.blocks:
            x = block(x)
        return x

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a :class:`DensePredError` unless ``x`` is a batch this net accepts."""
        cfg = self.config
        if cfg.dims == 0:
            if x.ndim != 2 or x.shape[1] != cfg.in_channels:
                raise DensePredError(
                    f"input of shape {list(x.shape)} is invalid; expected (batch, {cfg.in_channels}) "
                    "feature vectors"
                )
            return
        assert self.geometry is not None
        if x.ndim != cfg.dims + 2 or x.shape[1] != cfg.in_channels:
            raise DensePredError(
                f"input of shape {list(x.shape)} is invalid; expected (batch, {cfg.in_channels}, "
                f"{', '.join('zyx'[3 - cfg.dims:])}) with {cfg.in_channels} channel(s)"
            )
        spatial = tuple(x.shape[2:])
        if any(s < f for s, f in zip(spatial, self.geometry.fov, strict=True)):
            raise DensePredError(
                f"input spatial shape {list(spatial)} is smaller than the field of view "
                f"{list(self.geometry.fov)}"
            )


def build_net(config: Config | NetworkConfig) -> DenseNet:
    """A randomly initialised network for a config (or its ``[network]`` part).

    Example:
        >>> net = build_net(load_config("examples/neuro3d.toml"))   # doctest: +SKIP
        >>> net.geometry.fov                                        # doctest: +SKIP
    """
    network = config.network if isinstance(config, Config) else config
    if not isinstance(network, NetworkConfig):
        raise DensePredError(f"build_net takes a config (densepred.load_config(path)), got {type(config).__name__}")
    check_fits_in_memory(network)
    return DenseNet(network)


# A net's parameters need their own memory, a copy per engine (float64 while folding batch norm),
# and an optimizer's state in training: about this many times the float32 weights.
PARAMETER_COPIES = 6


def check_fits_in_memory(network: NetworkConfig) -> None:
    """Refuse, before allocating, a network whose weights cannot fit in the available memory."""
    if network.dims:
        count = network_geometry(network).parameter_count
    else:
        sizes = [network.in_channels, *network.mlp, network.n_classes]
        count = sum(a * b + b for a, b in itertools.pairwise(sizes))
    need = count * 4 * PARAMETER_COPIES
    available = available_ram()
    if need > available:
        raise DensePredError(f"this network has {count:,} parameters and needs about {need / 2**30:.1f} GiB for "
                             f"them, more than the {available / 2**30:.1f} GiB of memory available; use fewer "
                             "filters or smaller kernels")


def _conv(layer: LayerGeometry, dims: int) -> nn.Module:
    return CONV[dims](layer.in_channels, layer.out_channels, layer.kernel)
