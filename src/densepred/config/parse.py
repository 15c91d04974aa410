"""Configuration files: TOML data, parsed and validated once.

A config describes the network and, in optional sections, training and prediction::

    name = "membranes3d"
    save_dir = "runs/membranes3d"      # relative to the config file

    [network]
    dims = 3                           # 2 or 3 spatial axes; 0 for feature vectors
    in_channels = 1
    n_classes = 2
    activation = "relu"
    layers = [
      { filters = 16, kernel = [1, 5, 5], pool = [1, 2, 2] },
      { filters = 32, kernel = 3, pool = 2 },
    ]
    mlp = []                           # perceptron sizes after the convolutions
    output_kernel = 1                  # kernel of the implied output convolution

    [prediction]
    tile_shape = [32, 128, 128]        # input window per step
    mode = "auto"

Every problem is a :class:`ConfigError` naming the key, the bad value and what is valid.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError, did_you_mean
from .schema import (
    ACTIVATIONS,
    MODES,
    Config,
    DataPair,
    LayerSpec,
    NetworkConfig,
    PredictionConfig,
    Shape,
    TrainingConfig,
    check_plain_patch,
    network_geometry,
)

TOP_KEYS = ("name", "save_dir", "network", "training", "prediction")
NETWORK_KEYS = (
    "dims", "in_channels", "n_classes", "activation", "layers", "mlp", "output_kernel",
    "dropout", "batchnorm", "patch_size", "class_names",
)
LAYER_KEYS = ("filters", "kernel", "pool")
PREDICTION_KEYS = ("tile_shape", "mode", "batch_size")
TRAINING_KEYS = tuple(TrainingConfig.__dataclass_fields__)
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "step", "cosine")


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file.

    Example:
        >>> cfg = load_config("examples/m36.toml")        # doctest: +SKIP
        >>> cfg.network.layers[0].kernel                   # doctest: +SKIP
        (2, 2, 2)
    """
    if not isinstance(path, str | Path):
        raise ConfigError(f"config path {path!r} is invalid; expected the path of a TOML file (a str or Path)")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}); a config is a TOML file in UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return config_from_dict(data, path=path)


def config_from_dict(data: Mapping[str, Any], path: str | Path | None = None) -> Config:
    """Validate a config given as a mapping (the parsed TOML document)."""
    path = Path(path) if path is not None else None
    _check_keys(data, TOP_KEYS, "top level")
    if "network" not in data:
        raise ConfigError("missing [network] section; it needs at least dims, in_channels, n_classes")
    name = data.get("name", path.stem if path else "net")
    if not isinstance(name, str) or not name or any(c in name for c in "/\\"):
        raise ConfigError(f"name = {name!r} is invalid; expected a non-empty string without slashes")
    network = parse_network(_table(data["network"], "network"))
    prediction = parse_prediction(_table(data.get("prediction", {}), "prediction"), network)
    training = None
    if "training" in data:
        training = parse_training(_table(data["training"], "training"), network)
    save_dir = None
    if "save_dir" in data:
        raw = data["save_dir"]
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"save_dir = {raw!r} is invalid; expected a directory path string")
        base = path.parent if path else Path.cwd()
        save_dir = (base / raw).resolve()
    elif path is not None:
        save_dir = path.parent.resolve()
    return Config(name, network, prediction, training, save_dir, path, data)


def parse_network(table: Mapping[str, Any]) -> NetworkConfig:
    _check_keys(table, NETWORK_KEYS, "[network]")
    for key in ("dims", "in_channels", "n_classes"):
        if key not in table:
            raise ConfigError(f"[network] is missing '{key}'")
    dims = table["dims"]
    if isinstance(dims, bool) or not isinstance(dims, int) or dims not in (0, 2, 3):
        raise ConfigError(f"network.dims = {dims!r} is invalid; expected 2, 3 or 0 (feature vectors)")
    in_channels = _positive_int(table["in_channels"], "network.in_channels")
    n_classes = _positive_int(table["n_classes"], "network.n_classes")
    if n_classes < 2:
        raise ConfigError(f"network.n_classes = {n_classes} is invalid; expected at least 2 classes")
    activation = _choice(table.get("activation", "relu"), ACTIVATIONS, "network.activation", "unknown")
    layers = _parse_layers(table.get("layers", []), dims)
    mlp = _parse_mlp(table.get("mlp", []))
    dropout = table.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ConfigError(f"network.dropout = {dropout!r} is invalid; expected a rate in [0, 1)")
    batchnorm = _boolean(table.get("batchnorm", False), "network.batchnorm")
    common = {"in_channels": in_channels, "n_classes": n_classes, "activation": activation, "mlp": mlp,
              "dropout": float(dropout), "batchnorm": batchnorm,
              "class_names": _class_names(table.get("class_names", []), n_classes)}
    if dims == 0:
        if layers:
            raise ConfigError("network.layers must be empty when dims = 0 (feature vectors use mlp only)")
        for key in ("output_kernel", "patch_size"):
            if key in table:
                raise ConfigError(f"network.{key} has no meaning when dims = 0; remove it")
        return NetworkConfig(dims=0, **common)
    cfg = NetworkConfig(dims=dims, layers=layers, **common, **_spatial_head(table, dims, mlp))
    if cfg.patch_size is not None:
        _check_patch(cfg)
    return cfg


def _class_names(raw: Any, n_classes: int) -> tuple[str, ...]:
    if raw == []:
        return ()
    if not isinstance(raw, list) or len(raw) != n_classes or not all(isinstance(n, str) and n for n in raw):
        raise ConfigError(f"network.class_names = {raw!r} is invalid; expected {n_classes} non-empty names, one "
                          'per class (e.g. ["background", "membrane"])')
    return tuple(raw)


def _spatial_head(table: Mapping[str, Any], dims: int, mlp: tuple[int, ...]) -> dict[str, Any]:
    """``output_kernel`` and ``patch_size`` of an image net, checked against its perceptron head."""
    output_kernel = per_axis(table.get("output_kernel", 1), dims, "network.output_kernel")
    patch_size = None
    if "patch_size" in table:
        patch_size = per_axis(table["patch_size"], dims, "network.patch_size")
    if mlp and patch_size is None:
        raise ConfigError(
            "network.patch_size is required when mlp is non-empty: it fixes the feature map "
            "that the first perceptron sees (e.g. patch_size = [95, 95])"
        )
    if mlp and any(k != 1 for k in output_kernel):
        raise ConfigError(f"network.output_kernel = {list(output_kernel)} is invalid with an mlp head; "
                          "the output layer after perceptrons is a perceptron (output_kernel = 1)")
    return {"output_kernel": output_kernel, "patch_size": patch_size}


def parse_prediction(table: Mapping[str, Any], network: NetworkConfig) -> PredictionConfig:
    _check_keys(table, PREDICTION_KEYS, "[prediction]")
    tile = None
    if "tile_shape" in table:
        if network.dims == 0:
            raise ConfigError("prediction.tile_shape has no meaning when dims = 0")
        tile = per_axis(table["tile_shape"], network.dims, "prediction.tile_shape")
    mode = table.get("mode", "auto")
    if mode not in MODES:
        raise ConfigError(f"prediction.mode = {mode!r} is invalid{did_you_mean(str(mode), MODES)}; "
                          f"valid: {', '.join(MODES)}")
    batch = table.get("batch_size")
    if batch is not None:
        batch = _positive_int(batch, "prediction.batch_size")
    return PredictionConfig(tile, mode, batch)


def parse_training(table: Mapping[str, Any], network: NetworkConfig) -> TrainingConfig:
    _check_keys(table, TRAINING_KEYS, "[training]")
    values: dict[str, Any] = {}
    for key in ("data", "validation"):
        values[key] = _parse_data(table.get(key, []), f"training.{key}")
    for key in ("batch_size", "steps", "save_every", "validate_every", "validation_patches", "lr_step"):
        if key in table:
            values[key] = _positive_int(table[key], f"training.{key}")
    for key, low, high in (("lr", 0.0, None), ("momentum", 0.0, 1.0), ("weight_decay", 0.0, None),
                           ("lr_decay", 0.0, 1.0), ("grey_jitter", 0.0, 1.0),
                           ("validation_fraction", 0.0, 0.9)):
        if key in table:
            values[key] = _number(table[key], f"training.{key}", low, high, strict_low=key == "lr")
    for key in ("flips", "swap_axes"):
        if key in table:
            values[key] = _boolean(table[key], f"training.{key}")
    for key, choices in (("optimizer", OPTIMIZERS), ("lr_schedule", LR_SCHEDULES)):
        if key in table:
            values[key] = _choice(table[key], choices, f"training.{key}")
    values.update(_training_labels(table, network))
    values["patch_size"] = _training_patch(table, network)
    training = replace(TrainingConfig(), **values)
    _check_batchnorm_batch(network, training)
    return training


def _training_labels(table: Mapping[str, Any], network: NetworkConfig) -> dict[str, Any]:
    """``seed``, ``class_weights`` and ``ignore_label``, checked."""
    values: dict[str, Any] = {}
    if "seed" in table:
        seed = table["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"training.seed = {seed!r} is invalid; expected an integer >= 0")
        values["seed"] = seed
    if "class_weights" in table:
        weights = table["class_weights"]
        if (not isinstance(weights, list) or len(weights) != network.n_classes
                or not all(isinstance(w, int | float) and not isinstance(w, bool) and w >= 0 for w in weights)):
            raise ConfigError(f"training.class_weights = {weights!r} is invalid; expected "
                              f"{network.n_classes} non-negative numbers, one per class")
        if not any(w > 0 for w in weights):
            raise ConfigError("training.class_weights are all 0: no voxel would count; give a class a weight > 0")
        values["class_weights"] = tuple(float(w) for w in weights)
    if "ignore_label" in table:
        label = table["ignore_label"]
        if isinstance(label, bool) or not isinstance(label, int):
            raise ConfigError(f"training.ignore_label = {label!r} is invalid; expected an integer label")
        values["ignore_label"] = label
    return values


def _check_batchnorm_batch(network: NetworkConfig, training: TrainingConfig) -> None:
    """Batch norm in training mode needs two or more values per channel in every layer's output."""
    if not network.batchnorm or training.batch_size > 1:
        return
    if network.dims:
        assert training.patch_size is not None
        maps = [row.map_shape for row in network_geometry(network).table(training.patch_size)[:-1]]
        if all(shape is not None and math.prod(shape) > 1 for shape in maps):
            return
    raise ConfigError("training.batch_size = 1 is invalid with network.batchnorm = true: a layer's output has "
                      "one value per channel, which batch norm cannot normalise; use batch_size >= 2")


def _training_patch(table: Mapping[str, Any], network: NetworkConfig) -> Shape | None:
    if network.dims == 0:
        if "patch_size" in table:
            raise ConfigError("training.patch_size has no meaning when dims = 0; remove it")
        return None
    if "patch_size" not in table:
        if network.patch_size is None:
            raise ConfigError("training.patch_size is required: the input patch per training sample "
                              "(e.g. patch_size = [9, 65, 65])")
        return network.patch_size
    patch = per_axis(table["patch_size"], network.dims, "training.patch_size")
    if network.patch_size is not None and patch != network.patch_size:
        raise ConfigError(f"training.patch_size = {list(patch)} differs from network.patch_size = "
                          f"{list(network.patch_size)}, which fixes the perceptron head; use one value")
    check_plain_patch(network_geometry(network), patch, "training.patch_size")
    return patch


def _parse_data(raw: Any, key: str) -> tuple[DataPair, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{key} is invalid; expected a list like "
                          '[{ raw = "train.h5:raw", label = "train.h5:label" }]')
    pairs = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or set(item) != {"raw", "label"} or not all(
                isinstance(v, str) and v for v in item.values()):
            raise ConfigError(f"{key}[{i}] = {item!r} is invalid; expected "
                              '{ raw = "SPEC", label = "SPEC" } with SPEC like file.h5:dataset, '
                              "file.zarr:path, file.n5:path, file.tif, file.npy or file.csv")
        pairs.append(DataPair(item["raw"], item["label"]))
    return tuple(pairs)


def _number(value: Any, key: str, low: float, high: float | None, strict_low: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (value > low if strict_low else value >= low) and (high is None or value < high)
    if not ok:
        relation = ">" if strict_low else ">="
        bound = f"{relation} {low:g}" + (f" and < {high:g}" if high is not None else "")
        raise ConfigError(f"{key} = {value!r} is invalid; expected a number {bound}")
    return float(value)


def per_axis(value: Any, dims: int, key: str, minimum: int = 1) -> Shape:
    """A scalar or a list of ``dims`` integers >= ``minimum``, as a tuple in (z, y, x) order."""
    items = value if isinstance(value, list | tuple) else [value] * dims
    ok = len(items) == dims and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in items
    )
    if not ok:
        raise ConfigError(
            f"{key} = {value!r} is invalid; expected an integer >= {minimum} or a list of {dims} "
            f"such integers in (z, y, x) order"
        )
    return tuple(int(v) for v in items)


def _parse_layers(raw: Any, dims: int) -> tuple[LayerSpec, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"network.layers = {raw!r} is invalid; expected a list of tables "
                          "like {{ filters = 16, kernel = 3, pool = 2 }}")
    layers = []
    for i, item in enumerate(raw):
        where = f"network.layers[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where} = {item!r} is invalid; expected a table with filters, kernel, pool")
        _check_keys(item, LAYER_KEYS, where)
        for key in ("filters", "kernel"):
            if key not in item:
                raise ConfigError(f"{where} is missing '{key}'")
        filters = _positive_int(item["filters"], f"{where}.filters")
        kernel = per_axis(item["kernel"], dims, f"{where}.kernel")
        pool = per_axis(item.get("pool", 1), dims, f"{where}.pool")
        layers.append(LayerSpec(filters, kernel, pool))
    return tuple(layers)


def _parse_mlp(raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"network.mlp = {raw!r} is invalid; expected a list of perceptron sizes")
    return tuple(_positive_int(v, f"network.mlp[{i}]") for i, v in enumerate(raw))


def _check_patch(cfg: NetworkConfig) -> None:
    network_geometry(cfg)  # raises ConfigError naming the nearest valid patch sizes


def _table(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"'{name}' must be a table ([{name}]), got {value!r}")
    return value


def _check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(
                f"unknown key '{key}' in {where}{did_you_mean(key, allowed)}; "
                f"valid keys: {', '.join(allowed)}"
            )


def _boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} = {value!r} is invalid; expected true or false")
    return value


def _choice(value: Any, choices: tuple[str, ...], key: str, problem: str = "invalid") -> str:
    if value not in choices:
        raise ConfigError(f"{key} = {value!r} is {problem}{did_you_mean(str(value), choices)}; "
                          f"valid: {', '.join(choices)}")
    return value


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} = {value!r} is invalid; expected a positive integer")
    return value
