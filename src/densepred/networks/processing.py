"""A bioimage.io model's input preprocessing, as densepred applies it to every window.

Each step of the description becomes a :class:`Step`. Steps with fixed values (``binarize``,
``clip`` with ``min``/``max``, ``scale_linear``, ``sigmoid``, ``fixed_zero_mean_unit_variance``,
``ensure_dtype``) act voxel by voxel. ``zero_mean_unit_variance``, ``scale_range`` and ``clip``
with percentiles need statistics of the whole image (one sample); they are measured once,
before the first window (``densepred.running.compute.preprocess``), so every window is normalised
with the same numbers as one whole-image forward would be and exact tiling stays exact.

Statistics may be joint or per channel, and for a 2D model over a stack of slices (each slice
one sample) per slice. Statistics that keep a space axis (normalising each row, say) cannot be
reproduced window by window; such a description is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DensePredError

VOXELWISE = ("binarize", "clip", "scale_linear", "sigmoid", "fixed_zero_mean_unit_variance", "ensure_dtype")
MEASURED = ("zero_mean_unit_variance", "scale_range")
DTYPES = ("float32", "float64", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "bool")


@dataclass(frozen=True)
class Step:
    """One preprocessing step: its bioimage.io ``name``, its fixed ``values`` (numbers, or one
    number per channel), and for measured steps which statistics: joint over the channels
    or per channel, over the whole stack or per slice (``per_sample``)."""

    name: str
    values: dict[str, Any] = field(default_factory=dict)
    per_channel: bool = False
    per_sample: bool = False

    @property
    def measured(self) -> bool:
        """Whether the step needs statistics of the whole image."""
        return self.name in MEASURED or (self.name == "clip" and ("min_percentile" in self.values
                                                                  or "max_percentile" in self.values))

    def percentiles(self) -> dict[str, float]:
        """The percentiles a measured ``scale_range`` or ``clip`` needs, by the name of the
        value each becomes: ``lower`` and ``upper``."""
        if self.name == "scale_range":
            return {"lower": float(self.values.get("min_percentile", 0.0)),
                    "upper": float(self.values.get("max_percentile", 100.0))}
        names = {"lower": "min_percentile", "upper": "max_percentile"}
        return {name: float(self.values[key]) for name, key in names.items() if key in self.values}


def apply_step(step: Step, x: np.ndarray, stats: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """``x`` (float32, channels first) after ``step``; ``stats`` are the measured values, shaped
    to broadcast over ``x`` (see :func:`densepred.running.compute.preprocess.resolve`)."""
    values = {**{k: _broadcast(v, x.ndim) for k, v in step.values.items()}, **(stats or {})}
    values.setdefault("eps", np.float32(1e-6))
    if step.name not in _OPERATIONS:
        raise DensePredError(f"preprocessing step {step.name!r} is not supported; densepred applies "
                             f"{', '.join(VOXELWISE + MEASURED)}")
    return np.asarray(_OPERATIONS[step.name](x, values), np.float32)


_OPERATIONS = {
    "binarize": lambda x, v: x > v["threshold"],
    "clip": lambda x, v: np.clip(x, v.get("min", v.get("lower")), v.get("max", v.get("upper"))),
    "scale_linear": lambda x, v: x * v.get("gain", np.float32(1)) + v.get("offset", np.float32(0)),
    "sigmoid": lambda x, v: 1 / (1 + np.exp(-x)),
    "softmax": lambda x, v: np.exp(x - x.max(axis=0)) / np.exp(x - x.max(axis=0)).sum(axis=0),  # over the channels
    "fixed_zero_mean_unit_variance": lambda x, v: (x - v["mean"]) / v["std"],
    "zero_mean_unit_variance": lambda x, v: (x - v["mean"]) / (v["std"] + v["eps"]),
    "scale_range": lambda x, v: (x - v["lower"]) / (v["upper"] - v["lower"] + v["eps"]),
    "ensure_dtype": lambda x, v: x.astype(v["dtype"]),
}


def _broadcast(value: Any, ndim: int) -> Any:
    """A per-channel list as a ``(C, 1, ..., 1)`` float32 array; numbers and names as they are."""
    if isinstance(value, list | tuple):
        return np.asarray(value, np.float32).reshape(-1, *(1,) * (ndim - 1))
    return np.float32(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def check_channels(steps: Sequence[Step], channels: int) -> None:
    """Per-channel values must have one number per input channel."""
    for step in steps:
        for key, value in step.values.items():
            if isinstance(value, list | tuple) and len(value) != channels:
                raise DensePredError(f"preprocessing {step.name}: {key} has {len(value)} values for {channels} "
                                     f"input channel(s); expected one per channel")


__all__ = ["DTYPES", "MEASURED", "VOXELWISE", "Step", "apply_step", "check_channels"]
