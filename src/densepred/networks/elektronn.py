"""ELEKTRONN 1 nets in densepred: a config and its ``.param`` weights as a densepred config and
safetensors weights (``densepred import-elektronn``).

Weight layouts (ELEKTRONN's axes x, y[, z]; 3D data internally z, x, y):

* 3D conv W ``(nf, fz, nin, fx, fy)`` -> densepred ``(nf, nin, fz, fy, fx)``; 2D ``(nf, nin, fx, fy)``
  -> ``(nf, nin, fy, fx)``. Kernels are taken as stored (cross-correlation), as ELEKTRONN2's
  importer took them.
* perceptron W ``(n_in, n_out)`` -> ``(n_out, n_in)``; the first one after conv layers reads the
  flattened maps in ELEKTRONN's order, ``(z, ch, x, y)`` (3D) or ``(ch, x, y)`` (2D), and becomes a
  convolution over the last maps, as densepred builds MLP heads.

ELEKTRONN added the bias after max-pooling and applied the activation after that; for max
pooling and the monotonic activations carried (relu, tanh, sigmoid, linear) that equals
densepred's convolution, bias, activation, then pooling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import config_from_dict, network_geometry
from ..config.elektronn import Converted, NetSizes, convert, read_elektronn_config
from ..config.safe_python import PythonSettings
from ..errors import DensePredError
from ..files import atomic_write_text
from .build import DenseNet, build_net
from .elektronn_param import ParamFile, read_param_file
from .weights import save_weights


@dataclass
class Imported:
    """What ``densepred import-elektronn`` wrote."""

    config: Path
    weights: Path | None
    converted: Converted
    warnings: list[str] = field(default_factory=list)


def import_elektronn(config: str | Path, param: str | Path | None, out: str | Path,
                     in_channels: int | None = None, n_classes: int | None = None) -> Imported:
    """Convert an ELEKTRONN 1 config (and its ``.param`` weights) into ``out``: ``<name>.toml``
    and ``<name>-LAST.safetensors``. Every weight shape is checked before anything is written."""
    settings = read_elektronn_config(config)
    params = read_param_file(param) if param is not None else None
    sizes = NetSizes(in_channels if in_channels is not None else _param_in_channels(params, settings),
                     n_classes if n_classes is not None else _param_classes(params))
    converted = convert(settings, sizes)
    net = build_net(config_from_dict(converted.document))
    state = elektronn_state(net, params, converted) if params is not None else None
    folder = Path(out)
    toml_path, weights_path = folder / f"{converted.name}.toml", folder / f"{converted.name}-LAST.safetensors"
    for path in (toml_path, weights_path):
        if path.exists():
            raise DensePredError(f"{path} exists; choose another --out folder or remove it")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DensePredError(f"cannot create {folder}: {exc.strerror or exc}") from None
    if state is not None:
        net.load_state_dict(state)
        save_weights(net, weights_path, {"imported_from": Path(param).name})
    atomic_write_text(toml_path, converted.toml)
    return Imported(toml_path, weights_path if state is not None else None, converted, converted.warnings)


def _param_in_channels(params: ParamFile | None, settings: PythonSettings) -> int | None:
    if params is None or not params.layers:
        return None
    weight = params.layers[0][0]
    mode, n_dim = settings.get("mode"), settings.get("n_dim")
    if mode == "vect-scalar" and weight.ndim == 2:
        return int(weight.shape[0])
    if weight.ndim == 5 and n_dim == 3:
        return int(weight.shape[2])  # (nf, fz, nin, fx, fy)
    if weight.ndim == 4 and n_dim == 2:
        return int(weight.shape[1])  # (nf, nin, fx, fy)
    return None


def _param_classes(params: ParamFile | None) -> int | None:
    return None if params is None or not params.layers else int(params.layers[-1][1].shape[0])


def elektronn_state(net: DenseNet, params: ParamFile, converted: Converted) -> dict[str, torch.Tensor]:
    """``params`` as ``net``'s state dict; one error naming the layer at the first shape that differs."""
    expected = net.state_dict()
    blocks = len(net.blocks)
    if len(params.layers) != blocks:
        raise DensePredError(f"{params.path} holds {len(params.layers)} layers; the config's network has {blocks} "
                             "(its conv and perceptron layers and the output layer): was it trained with this config?")
    network = converted.document["network"]
    n_conv, has_mlp = len(network.get("layers", [])), bool(network.get("mlp"))
    state = {}
    for i, (weight, bias) in enumerate(params.layers):
        target = tuple(expected[f"blocks.{i}.transform.weight"].shape)
        kind = _kind(i, n_conv, has_mlp, converted.n_dim)
        mapped = _weight(weight, kind, converted.n_dim, target)
        if mapped is None or mapped.shape != target or bias.shape != (target[0],):
            raise DensePredError(f"{params.path}: layer {i} has W {list(weight.shape)} and b {list(bias.shape)} "
                                 f"(ELEKTRONN's layout); the config's network needs W "
                                 f"{_elektronn_shape(kind, target)} and b [{target[0]}]: was it trained with this "
                                 "config?")
        state[f"blocks.{i}.transform.weight"] = torch.from_numpy(np.ascontiguousarray(mapped))
        state[f"blocks.{i}.transform.bias"] = torch.from_numpy(bias.copy())
    return state


def _kind(index: int, n_conv: int, has_mlp: bool, dims: int) -> str:
    """conv (a convolution, the 1x1 output layer of an image-to-image net too), flat (the first
    perceptron, reading the flattened maps) or dense (a perceptron after another)."""
    if dims and (index < n_conv or (index == n_conv and not has_mlp)):
        return "conv"
    return "flat" if dims and index == n_conv else "dense"


def _weight(weight: np.ndarray, kind: str, dims: int, target: tuple[int, ...]) -> np.ndarray | None:
    """An ELEKTRONN weight array in densepred's layout (None when its rank or size does not fit)."""
    if kind == "conv":
        if weight.ndim != dims + 2:
            return None
        return weight.transpose(0, 2, 1, 4, 3) if dims == 3 else weight.transpose(0, 1, 3, 2)
    if weight.ndim != 2 or weight.shape[0] != math.prod(target[1:]):
        return None
    n_out = weight.shape[1]
    if kind == "dense":
        return weight.T.reshape(n_out, *target[1:])
    channels, spatial = target[1], target[2:]
    if dims == 3:
        sz, sy, sx = spatial
        return weight.reshape(sz, channels, sx, sy, n_out).transpose(4, 1, 0, 3, 2)
    sy, sx = spatial
    return weight.reshape(channels, sx, sy, n_out).transpose(3, 0, 2, 1)


def _elektronn_shape(kind: str, target: tuple[int, ...]) -> list[int]:
    """The W shape ELEKTRONN stores for densepred's ``target``."""
    if kind != "conv":
        return [math.prod(target[1:]), target[0]]
    if len(target) == 5:
        nf, nin, fz, fy, fx = target
        return [nf, fz, nin, fx, fy]
    nf, nin, fy, fx = target
    return [nf, nin, fx, fy]


def config_geometry_text(converted: Converted) -> str:
    """The converted net's field of view and stride, z, y, x, for the import's summary line."""
    network = config_from_dict(converted.document).network
    if network.dims == 0:
        return f"feature vectors of {network.in_channels}"
    geometry = network_geometry(network)
    return f"field of view {list(geometry.fov)}, stride {list(geometry.stride)} (z, y, x)"
