"""A model's input preprocessing, its statistics measured over the whole image once.

:func:`resolve` measures what each measured step needs (mean and standard deviation, or
percentiles) over the whole image, slab by slab along the first spatial axis, with the steps
before it applied; :meth:`Prepared.apply` then normalises each window with those numbers, so
tiles see what one whole-image forward would see. Percentiles are exact where the image has
at most :data:`EXACT_VALUES` values; of a larger image they are taken from evenly spaced
slices (logged).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ...io import ChannelFirst
from ...networks.foreign import ForeignNet, StackNet
from ...networks.processing import Step, apply_step, check_channels

log = logging.getLogger("densepred")

SLAB_VOXELS = 2**24  # voxels read at a time while measuring
EXACT_VALUES = 2**26  # percentiles of at most this many values are exact (256 MiB of float32)


@dataclass(frozen=True)
class Prepared:
    """Preprocessing steps with their measured statistics (arrays shaped ``(C or 1, Z or 1, 1,
    ...)``: per channel or joint, per slice or over the whole image)."""

    steps: tuple[Step, ...]
    stats: tuple[dict[str, np.ndarray] | None, ...]

    def apply(self, data: np.ndarray, starts: Sequence[int]) -> np.ndarray:
        """``data`` (float32 ``(C, *window)``, read at ``starts``) preprocessed."""
        for step, stats in zip(self.steps, self.stats, strict=True):
            data = apply_step(step, data, _at(stats, starts[0], data.shape[1]))
        return data

    @staticmethod
    def values(data: np.ndarray) -> np.ndarray:
        """Input values as stored, in float32: the steps act on them (a bioimage.io
        ``fixed_zero_mean_unit_variance`` with mean 103.5 means 103.5 of a uint8 image), never on
        integers divided by their dtype's maximum as densepred's own nets read them."""
        return np.ascontiguousarray(data, dtype=np.float32)

    def describe(self) -> list[str]:
        """The steps, their values and (where few) their measured statistics."""
        return [_describe(step, stats) for step, stats in zip(self.steps, self.stats, strict=True)]


def _describe(step: Step, stats: dict[str, np.ndarray] | None) -> str:
    parts = [f"{k}={v}" for k, v in step.values.items()]
    parts += ["per channel"] * step.per_channel
    for name, values in (stats or {}).items():
        parts.append(f"{name}={np.round(values.ravel(), 6).tolist()}" if values.size <= 4 else
                     f"{name}: {values.size} values")
    return f"{step.name}({', '.join(parts)})"


def _at(stats: dict[str, np.ndarray] | None, z: int, depth: int) -> dict[str, np.ndarray] | None:
    """Statistics for slices ``z .. z + depth`` (those measured per slice are cut to them)."""
    if stats is None:
        return None
    return {k: v[:, z:z + depth] if v.shape[1] > 1 else v for k, v in stats.items()}


def resolve(net: ForeignNet, source: ChannelFirst) -> Prepared | None:
    """The net's preprocessing with its statistics measured over ``source``; None without steps."""
    steps = tuple(getattr(net, "preprocessing", ()))
    if not steps:
        return None
    check_channels(steps, source.channels)
    stacked = isinstance(net, StackNet)
    stats: list[dict[str, np.ndarray] | None] = []
    for i, step in enumerate(steps):
        before = Prepared(steps[:i], tuple(stats))
        stats.append(_measure(step, source, before, stacked) if step.measured else None)
    prepared = Prepared(steps, tuple(stats))
    log.info("preprocessing: %s", "; ".join(prepared.describe()))
    return prepared


def _measure(step: Step, source: ChannelFirst, before: Prepared, stacked: bool) -> dict[str, np.ndarray]:
    per_slice = stacked and step.per_sample
    if step.name == "zero_mean_unit_variance":
        return _moments(step, source, before, per_slice)
    return _percentiles(step, source, before, per_slice)


def _moments(step: Step, source: ChannelFirst, before: Prepared, per_slice: bool) -> dict[str, np.ndarray]:
    """Mean and (population) standard deviation, from float64 sums per channel and slice."""
    sums, squares = [], []
    for _, data in _slabs(source, before):
        d = data.astype(np.float64)
        inner = tuple(range(2, d.ndim))
        sums.append(d.sum(axis=inner))
        squares.append(np.square(d).sum(axis=inner))
    s1, s2 = np.concatenate(sums, axis=1), np.concatenate(squares, axis=1)  # (C, Z)
    count = math.prod(source.spatial_shape[1:])
    s1, s2, count = _joint(s1, s2, count, step.per_channel, per_slice)
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
    return {"mean": _shaped(mean, source), "std": _shaped(std, source)}


def _joint(s1: np.ndarray, s2: np.ndarray, count: int, per_channel: bool,
           per_slice: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """Sums per (channel, slice) summed over what the statistics are joint in."""
    if not per_slice:
        s1, s2, count = s1.sum(1, keepdims=True), s2.sum(1, keepdims=True), count * s1.shape[1]
    if not per_channel:
        s1, s2, count = s1.sum(0, keepdims=True), s2.sum(0, keepdims=True), count * s1.shape[0]
    return s1, s2, count


def _percentiles(step: Step, source: ChannelFirst, before: Prepared, per_slice: bool) -> dict[str, np.ndarray]:
    wanted = step.percentiles()
    q = np.asarray(list(wanted.values())) / 100
    if per_slice:
        rows = [_quantiles(data[:, z], q, step.per_channel) for _, data in _slabs(source, before)
                for z in range(data.shape[1])]
        values = np.stack(rows, axis=2)  # (len(q), C or 1, Z)
    else:
        values = _quantiles(_sample(source, before, step), q, step.per_channel)[..., None]
    return {name: _shaped(values[i], source) for i, name in enumerate(wanted)}


def _quantiles(values: np.ndarray, q: np.ndarray, per_channel: bool) -> np.ndarray:
    """``(len(q), C or 1)`` quantiles (numpy's linear interpolation) of ``(C, ...)`` values."""
    flat = values.reshape(values.shape[0], -1) if per_channel else values.reshape(1, -1)
    return np.quantile(flat, q, axis=1)


def _sample(source: ChannelFirst, before: Prepared, step: Step) -> np.ndarray:
    """The whole image, or evenly spaced slices of it when it has more than EXACT_VALUES values."""
    total = source.channels * math.prod(source.spatial_shape)
    every = max(1, math.ceil(total / EXACT_VALUES))
    if every > 1:
        depth = source.spatial_shape[0]
        log.warning("%s: percentiles estimated from every %d-th slice of %d (%d values); exact up to %d values",
                    step.name, every, depth, math.ceil(depth / every) * total // depth, EXACT_VALUES)
    return np.concatenate([data for _, data in _slabs(source, before, every)], axis=1)


def _slabs(source: ChannelFirst, before: Prepared, every: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """``(z, data)``: the image in slabs along its first spatial axis (single slices, every
    ``every``-th, when ``every`` > 1), float32, with the steps ``before`` applied."""
    spatial = source.spatial_shape
    depth = max(1, SLAB_VOXELS // max(1, source.channels * math.prod(spatial[1:]))) if every == 1 else 1
    rest = tuple(slice(0, n) for n in spatial[1:])
    for z in range(0, spatial[0], depth if every == 1 else every):
        data = Prepared.values(source.read((slice(z, min(z + depth, spatial[0])), *rest)))
        yield z, before.apply(data, (z, *(0,) * len(rest))) if before.steps else data


def _shaped(values: np.ndarray, source: ChannelFirst) -> np.ndarray:
    """``(C or 1, Z or 1)`` values as float32 ``(C or 1, Z or 1, 1, ...)`` over the image's axes."""
    return np.asarray(values, np.float32).reshape(*values.shape, *(1,) * (len(source.spatial_shape) - 1))


__all__ = ["EXACT_VALUES", "Prepared", "resolve"]
