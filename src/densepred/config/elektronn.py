"""An ELEKTRONN 1 training config as a densepred config (``densepred import-elektronn``).

The config is read without running it (:mod:`.safe_python`), over ELEKTRONN 1's own defaults.
Shapes there are in x, y[, z] order; densepred's are z, y, x (reversed). The network keys
(``n_dim``, ``desired_input``, ``filters``, ``pool``, ``nof_filters``, ``activation_func``,
``pooling_mode``, ``MFP``, ``MLP_layers``, ``target``, ``mode``, ``n_lab``) become ``[network]``
and ``[prediction]``; the output layer ELEKTRONN added by itself (a 1x1 linear convolution, or a
linear perceptron after an MLP) is densepred's own output layer. What densepred cannot carry is
named in the file's comments and in one warning each; a setting the network needs and densepred
cannot represent (maxout, max-abs pooling, per-layer activations, affinity outputs) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit

from ..errors import ConfigError
from .parse import config_from_dict
from .safe_python import PythonSettings, read_python_settings
from .schema import network_geometry

# ELEKTRONN 1's distribution-wide defaults (its MasterConfig) for what the conversion reads.
DEFAULTS: dict[str, Any] = {
    "save_name": "Test", "activation_func": "relu", "batch_size": 1, "dropout_rates": [], "n_dim": 2,
    "desired_input": 100, "filters": [], "pool": [], "nof_filters": [], "pooling_mode": "max", "MFP": [],
    "MLP_layers": [], "target": "nll", "mode": "img-img", "n_lab": None, "rnn_layer_kwargs": None,
    "optimizer": "SGD", "SGD_params": {"LR": 0.001, "momentum": 0.9}, "Adam_params": {"LR": 0.001},
    "weight_decay": False, "class_weights": None, "n_steps": 10**12, "LR_decay": 0.993,
}
NETWORK_KEYS = ("n_dim", "desired_input", "filters", "pool", "nof_filters", "activation_func", "pooling_mode",
                "MFP", "MLP_layers", "target", "mode", "n_lab", "rnn_layer_kwargs")
ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "sig": "sigmoid", "sigmoid": "sigmoid", "linear": "linear",
               "none": "linear", "lin": "linear"}
# ELEKTRONN's own run settings: where and how it trained, plotted and printed (no effect on the net)
RUN_KEYS = ("save_path", "plot_on", "print_status", "device", "param_save_h", "initial_prev_h", "prev_save_h",
            "overwrite", "param_file", "background_processes", "preview_data_path", "preview_kwargs",
            "history_freq", "monitor_batch_size", "max_runtime", "data_class_name", "data_load_kwargs",
            "data_batch_kwargs")
# training keys that map onto densepred's [training] (shown as a commented block to complete)
TRAINING_KEYS = ("batch_size", "n_steps", "optimizer", "SGD_params", "Adam_params", "weight_decay",
                 "class_weights", "LR_decay", "save_name")


@dataclass
class Converted:
    """The densepred config (TOML text and its table), what the .param must hold, and warnings."""

    name: str
    toml: str
    document: dict[str, Any]
    mode: str  # img-img, img-scalar or vect-scalar
    n_dim: int  # ELEKTRONN's image dimensions (2 or 3; 0 for feature vectors)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NetSizes:
    """What a config alone may leave open, taken from a .param or the command line."""

    in_channels: int | None = None
    n_classes: int | None = None


def read_elektronn_config(path: str | Path) -> PythonSettings:
    """The config's settings over ELEKTRONN 1's defaults, without running it."""
    return read_python_settings(path, DEFAULTS)


def convert(settings: PythonSettings, sizes: NetSizes = NetSizes()) -> Converted:
    """``settings`` as a densepred config; refuses what the network needs and densepred lacks."""
    for key in NETWORK_KEYS:
        if key in settings.unresolved:
            raise ConfigError(settings.unresolved[key].text(settings.path, key) + "; write it as a literal")
    mode = settings.get("mode")
    if mode not in ("img-img", "img-scalar", "vect-scalar"):
        raise ConfigError(f"{settings.path}: mode {mode!r} is not one ELEKTRONN 1 knew; expected img-img, "
                          "img-scalar or vect-scalar")
    _check_target(settings)
    dims = 0 if mode == "vect-scalar" else _n_dim(settings)
    layers = _layers(settings, dims)
    mlp = [_whole(settings, "MLP_layers", n) for n in _listed(settings, "MLP_layers")]
    activation = _activation(settings, len(layers) + len(mlp), any(any(p > 1 for p in lay["pool"]) for lay in layers))
    network: dict[str, Any] = {"dims": dims, "in_channels": _in_channels(sizes, settings, dims),
                               "n_classes": _n_classes(settings, sizes), "activation": activation}
    if layers:
        network["layers"] = layers
    if mlp:
        network["mlp"] = mlp
    dropout = _dropout(settings)
    if dropout:
        network["dropout"] = dropout
    if dims and mlp:
        network["patch_size"] = _shape(settings.get("desired_input"), dims, "desired_input")
    name = str(settings.get("save_name") or settings.path.stem)
    document: dict[str, Any] = {"name": name, "save_dir": ".", "network": network}
    if dims and not mlp:
        document["prediction"] = _prediction(settings, document, dims)
    warnings = _not_carried(settings)
    return Converted(name, _toml_text(settings, document, warnings), document, mode, dims, warnings)


def _check_target(settings: PythonSettings) -> None:
    target = settings.get("target")
    if target in ("affinity", "malis"):
        raise ConfigError(f"{settings.path}: target {target!r} predicts 3 affinities, each its own 2-class softmax; "
                          "densepred's nets have one softmax over all classes")
    if target == "regression":
        raise ConfigError(f"{settings.path}: target 'regression' has a linear output; densepred's nets predict "
                          "class probabilities (softmax)")
    if target != "nll":
        raise ConfigError(f"{settings.path}: target {target!r} is not one densepred can carry; it carries 'nll' "
                          "(classification with a softmax)")
    if settings.get("rnn_layer_kwargs") is not None:
        raise ConfigError(f"{settings.path}: rnn_layer_kwargs adds a recurrent layer; densepred has none")


def _n_dim(settings: PythonSettings) -> int:
    n_dim = settings.get("n_dim")
    if n_dim not in (2, 3):
        raise ConfigError(f"{settings.path}: n_dim = {n_dim!r} is invalid; expected 2 or 3")
    return int(n_dim)


def _shape(value: Any, dims: int, key: str) -> list[int]:
    """An ELEKTRONN shape (an int, or x, y[, z]) in densepred's z, y, x order."""
    values = [value] * dims if isinstance(value, int) else list(value) if isinstance(value, list | tuple) else []
    if len(values) != dims or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ConfigError(f"{key} = {value!r} is invalid for n_dim = {dims}; expected an int or {dims} positive "
                          "ints (x, y[, z])")
    return values[::-1]


def _listed(settings: PythonSettings, key: str) -> list[Any]:
    """A list setting (None, False or empty for none)."""
    value = settings.get(key)
    if not isinstance(value, list | tuple) and value not in (None, False, 0, ""):
        raise ConfigError(f"{settings.path}: {key} = {value!r} is invalid; expected a list")
    return list(value or [])


def _whole(settings: PythonSettings, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{settings.path}: {key} = {value!r} is invalid; expected a positive whole number")
    return value


def _per_layer(settings: PythonSettings, key: str, count: int, default: Any) -> list[Any]:
    value = settings.get(key)
    if value in (None, False, []):
        return [default] * count
    if not isinstance(value, list | tuple):  # one value for every layer
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise ConfigError(f"{settings.path}: {key} has {len(values)} entries for {count} conv layers")
    return values


def _layers(settings: PythonSettings, dims: int) -> list[dict[str, Any]]:
    filters, pools, widths = (_listed(settings, k) for k in ("filters", "pool", "nof_filters"))
    if not len(filters) == len(pools) == len(widths):
        raise ConfigError(f"{settings.path}: filters, pool and nof_filters have {len(filters)}, {len(pools)} and "
                          f"{len(widths)} entries; ELEKTRONN needs one of each per conv layer")
    if dims == 0:
        if filters:
            raise ConfigError(f"{settings.path}: mode 'vect-scalar' takes no conv layers (filters = {filters})")
        return []
    modes = _per_layer(settings, "pooling_mode", len(filters), "max")
    layers = []
    for i, (kernel, pool, width, pooling) in enumerate(zip(filters, pools, widths, modes, strict=True)):
        pool_shape = _shape(pool, dims, f"pool[{i}]")
        if pooling != "max" and any(p > 1 for p in pool_shape):
            raise ConfigError(f"{settings.path}: layer {i} pools with {pooling!r}; densepred pools with 'max' only")
        layers.append({"filters": _whole(settings, f"nof_filters[{i}]", width),
                       "kernel": _shape(kernel, dims, f"filters[{i}]"), "pool": pool_shape})
    return layers


def _activation(settings: PythonSettings, count: int, pools: bool) -> str:
    names = {str(a) for a in _per_layer(settings, "activation_func", count, "relu")}
    if len(names) > 1:
        raise ConfigError(f"{settings.path}: activation_func differs between layers ({', '.join(sorted(names))}); "
                          "densepred's nets use one activation")
    name = names.pop() if names else "relu"
    if name.startswith("maxout"):
        raise ConfigError(f"{settings.path}: activation_func {name!r} (maxout) has no densepred equivalent")
    if name == "abs" and pools:
        raise ConfigError(f"{settings.path}: activation_func 'abs' after max-pooling (ELEKTRONN's order) differs from "
                          "densepred's pooling after the activation; densepred cannot carry it")
    if name == "abs":
        raise ConfigError(f"{settings.path}: activation_func 'abs' has no densepred equivalent")
    if name.lower() not in ACTIVATIONS:
        raise ConfigError(f"{settings.path}: activation_func {name!r} is unknown; ELEKTRONN knew relu, tanh, sig, "
                          "abs, linear and maxout k")
    return ACTIVATIONS[name.lower()]


def _in_channels(sizes: NetSizes, settings: PythonSettings, dims: int) -> int:
    if sizes.in_channels is not None:
        return sizes.in_channels
    if dims == 0:
        raise ConfigError(f"{settings.path}: a 'vect-scalar' net's input size is not in its config; give the "
                          ".param file (its first layer has it) or --in-channels N (the features per example)")
    return 1


def _n_classes(settings: PythonSettings, sizes: NetSizes) -> int:
    n_lab = settings.get("n_lab")
    if sizes.n_classes is not None:
        if n_lab is not None and _whole(settings, "n_lab", n_lab) != sizes.n_classes:
            raise ConfigError(f"{settings.path}: n_lab = {n_lab} but the weights have {sizes.n_classes} outputs")
        return sizes.n_classes
    if n_lab is None:
        raise ConfigError(f"{settings.path}: n_lab = None (detected from the data by ELEKTRONN); give the .param "
                          "file (its output layer has it) or --n-classes N")
    return _whole(settings, "n_lab", n_lab)


def _dropout(settings: PythonSettings) -> float:
    rates = settings.get("dropout_rates")
    values = [r for r in (rates if isinstance(rates, list | tuple) else [rates]) if r]
    if not all(isinstance(r, int | float) and not isinstance(r, bool) for r in values):
        raise ConfigError(f"{settings.path}: dropout_rates = {rates!r} is invalid; expected rates between 0 and 1")
    return float(max(values)) if values else 0.0


def _prediction(settings: PythonSettings, document: dict[str, Any], dims: int) -> dict[str, Any]:
    """The tile ELEKTRONN predicted with (``desired_input``, made valid as ELEKTRONN did) and MFP."""
    cfg = config_from_dict(document)
    geometry = network_geometry(cfg.network)
    mfp = any(bool(m) for m in _per_layer(settings, "MFP", len(document["network"].get("layers", [])), 0))
    desired = _shape(settings.get("desired_input"), dims, "desired_input")
    below, above = geometry.nearest_valid(desired, "mfp")
    tile = desired if geometry.is_valid(desired, "mfp") else list(below or above)
    return {"tile_shape": [int(t) for t in tile], "mode": "mfp" if mfp else "auto"}


def _not_carried(settings: PythonSettings) -> list[str]:
    """One warning per setting the config gives that densepred does not carry."""
    carried = set(NETWORK_KEYS) | set(RUN_KEYS) | set(TRAINING_KEYS) | {"dropout_rates", "n_dim"}
    warnings = [f"{name} = {_short(value)} is not carried (no densepred equivalent)"
                for name, value in settings.values.items()
                if name not in DEFAULTS and name not in carried and _in_effect(value)]
    warnings += [settings.unresolved[name].text(settings.path, name) + "; skipped (the network does not need it)"
                 for name in settings.unresolved if name not in carried or name in TRAINING_KEYS]
    warnings += [f"{settings.path}, {line}: skipped, not run" for line in settings.skipped]
    return warnings


def _in_effect(value: Any) -> bool:
    """Whether a setting does something (None, False, 0 and empty ones switch a feature off)."""
    return value is not None and value is not False and value != 0 and value not in ([], {}, (), "")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _toml_text(settings: PythonSettings, document: dict[str, Any], warnings: list[str]) -> str:
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"Converted from the ELEKTRONN 1 config {settings.path.name} by densepred "
                            "import-elektronn."))
    doc.add(tomlkit.comment("Shapes are z, y, x (ELEKTRONN wrote x, y, z). Weights: <name>-LAST.safetensors here."))
    for key, value in document.items():
        doc[key] = value
    doc.add(tomlkit.nl())
    doc.add(tomlkit.comment("Training settings of the ELEKTRONN run, for a [training] section (densepred needs "
                            "its data in z, y, x order):"))
    for line in _training_hints(settings):
        doc.add(tomlkit.comment(f"  {line}"))
    if warnings:
        doc.add(tomlkit.nl())
        doc.add(tomlkit.comment("Not carried over:"))
        for warning in warnings:
            doc.add(tomlkit.comment(f"  {warning}"))
    return tomlkit.dumps(doc)


def _training_hints(settings: PythonSettings) -> list[str]:
    optimizer = str(settings.get("optimizer") or "SGD").lower()
    params = settings.get("Adam_params" if optimizer == "adam" else "SGD_params") or {}
    hints = [f"batch_size = {settings.get('batch_size')}",
             f'optimizer = "{"adam" if optimizer == "adam" else "sgd"}"'
             + ("" if optimizer in ("adam", "sgd") else f"  # ELEKTRONN: {optimizer.upper()}, which densepred lacks")]
    if isinstance(params, dict) and "LR" in params:
        hints.append(f"lr = {params['LR']}")
    if isinstance(params, dict) and "momentum" in params and optimizer != "adam":
        hints.append(f"momentum = {params['momentum']}")
    if settings.get("weight_decay"):
        hints.append(f"weight_decay = {settings.get('weight_decay')}")
    if settings.get("class_weights") is not None:
        hints.append(f"class_weights = {list(settings.get('class_weights'))}")
    hints.append(f'lr_schedule = "step"  # ELEKTRONN: x{settings.get("LR_decay")} every 1000 steps')
    hints.append(f"lr_decay = {settings.get('LR_decay')}")
    hints.append("lr_step = 1000")
    return hints
