"""The options of a model's windows as a Python caller gives them: checked in one line each.

``window`` (a whole number or one per axis), ``overlap`` (a fraction in [0, 1)), ``tta``
(``"flips"`` or distinct spatial axes) and ``channel_map`` (per flipped axis, the channels'
order after flipping back: a permutation). NumPy integers and floats count as numbers; bools do
not. Plain arithmetic and types, before a model is probed or a window runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import DensePredError


def whole(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def python_ints(value: Any) -> Any:
    """A NumPy integer, or an array, list or tuple of them, as Python integers; other values as
    they are (checked where they are used: a window against the model's sizes)."""
    if whole(value):
        return int(value)
    if isinstance(value, np.ndarray | list | tuple):
        return tuple(int(v) if whole(v) else v for v in (value.tolist() if isinstance(value, np.ndarray) else value))
    return value


def overlap_value(overlap: Any) -> float:
    if (isinstance(overlap, bool | np.bool_) or not isinstance(overlap, int | float | np.integer | np.floating)
            or not 0 <= overlap < 1):
        raise DensePredError(f"overlap {overlap!r} is invalid; expected a fraction in [0, 1)")
    return float(overlap)


def tta_axes(tta: Any, dims: int) -> tuple[int, ...] | None:
    """The flipped axes: None (no flips), every axis for ``"flips"``, or the axes given."""
    if tta is None:
        return None
    if isinstance(tta, str) and tta == "flips":
        return tuple(range(dims))
    axes = tuple(tta) if isinstance(tta, Sequence | np.ndarray) and not isinstance(tta, str) else None
    if axes is None or not all(whole(a) and 0 <= a < dims for a in axes) or len(set(axes)) != len(axes):
        raise DensePredError(f"tta {tta!r} is invalid; expected 'flips' or a list of distinct spatial axes in "
                             f"0..{dims - 1}")
    return tuple(int(a) for a in axes)


def channel_orders(channel_map: Any, dims: int) -> dict[int, tuple[int, ...]] | None:
    """``{axis: channel order}``, each axis a spatial one and each order whole numbers."""
    if channel_map is None or (isinstance(channel_map, dict) and not channel_map):
        return None
    valid = isinstance(channel_map, dict) and all(
        whole(a) and 0 <= a < dims and isinstance(order, Sequence | np.ndarray) and not isinstance(order, str)
        and len(order) > 0 and all(whole(c) for c in order) for a, order in channel_map.items())
    if not valid:
        raise DensePredError(f"channel_map {channel_map!r} is invalid; expected {{axis: channel order}} per flipped "
                             f"spatial axis (0..{dims - 1}), e.g. {{0: [1, 0, 2]}}: the channels after flipping that "
                             "axis back")
    return {int(a): tuple(int(c) for c in order) for a, order in channel_map.items()}


def check_orders(channel_map: dict[int, tuple[int, ...]] | None, channels: int) -> None:
    """Each order must be a permutation of the model's output channels."""
    for axis, order in (channel_map or {}).items():
        if sorted(order) != list(range(channels)):
            raise DensePredError(f"channel_map[{axis}] = {list(order)} is invalid: this model returns {channels} "
                                 f"channels, so it must order each of 0..{channels - 1} once")


MODEL_ONLY_DEFAULTS = {"overlap": 0.5, "tta": None, "channel_map": None, "model_kwargs": None, "trust_imports": (),
                       "dims": 3, "in_channels": 1, "activation": None, "output_tensor": None,
                       "weights_format": None, "contract": None}


def refuse_for_own_nets(**given: Any) -> None:
    """Options of models from elsewhere given to one of densepred's own nets: one line naming
    them, never ignored (an own net's windows are exact, neither blended nor flipped)."""
    named = [f"{name}={value!r}" for name, value in given.items() if not _is_default(value, MODEL_ONLY_DEFAULTS[name])]
    if named:
        raise DensePredError(f"{', '.join(named)}: for models from elsewhere (from_torch, from_bioimageio, --model); "
                             "densepred's own nets take their settings from their config and predict each window "
                             "exactly")


def _is_default(value: Any, default: Any) -> bool:
    if default is None or isinstance(default, tuple):
        return value is None or (isinstance(value, tuple | list) and list(value) == list(default or ()))
    return isinstance(value, int | float) and not isinstance(value, bool) and value == default
