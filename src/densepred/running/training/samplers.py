"""Training samples: random patches with labels on the network's output grid.

Three kinds of data, chosen by the network and the arrays:

* volumes (image to image): a raw image ``(C, *S)`` or ``(*S)`` and a label volume ``(*S)``;
  each patch's labels are the voxels its outputs predict, ``offset + stride * j``
* patches (one label per patch, nets with a perceptron head): raw ``(N, [C,] *patch)`` and
  labels ``(N,)``; a volume pair works too, labelled by each patch's centre voxel
* feature vectors (``dims = 0``): raw ``(N, features)`` and labels ``(N,)``
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...config import Config, DataPair, TrainingConfig
from ...errors import DensePredError
from ...geometry import Geometry
from ...io import ArraySpec, ChannelFirst, open_array, to_float32
from ...io.axes import AxesView
from ...io.images import OneSliceStack
from ...io.output_checks import check_finished
from ...io.reading import read_box

Shape = tuple[int, ...]
Batch = tuple[np.ndarray, np.ndarray]


@dataclass
class Augmentation:
    """Random flips, axis swaps within groups of interchangeable axes, and grey-value jitter."""

    flips: bool
    swap_groups: list[list[int]]  # spatial axes that may be permuted among themselves
    grey_jitter: float

    def apply(self, x: np.ndarray, y: np.ndarray | None,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """``x`` is ``(C, *S)``; ``y`` is ``(*out)`` on the output grid, or None for one label."""
        dims = x.ndim - 1
        if self.flips:
            for axis in range(dims):
                if rng.random() < 0.5:
                    x = np.flip(x, axis + 1)
                    y = None if y is None else np.flip(y, axis)
        for group in self.swap_groups:
            order = list(range(dims))
            shuffled = list(rng.permutation(group))
            for a, b in zip(group, shuffled, strict=True):
                order[a] = b
            x = x.transpose(0, *(a + 1 for a in order))
            y = None if y is None else y.transpose(order)
        if self.grey_jitter:
            g = self.grey_jitter
            x = x * np.float32(1 + rng.uniform(-g, g)) + np.float32(rng.uniform(-g, g))
        return np.ascontiguousarray(x, dtype=np.float32), None if y is None else np.ascontiguousarray(y)


def augmentation_for(training: TrainingConfig, geometry: Geometry | None) -> Augmentation | None:
    if geometry is None:
        return None
    patch = training.patch_size
    assert patch is not None
    groups: dict[Any, list[int]] = {}
    if training.swap_axes:
        for axis in range(geometry.ndim):
            # axes are interchangeable when the network and the patch treat them alike
            key = (patch[axis], tuple((layer.kernel[axis], layer.pool[axis]) for layer in geometry.layers))
            groups.setdefault(key, []).append(axis)
    swap = [g for g in groups.values() if len(g) > 1]
    return Augmentation(training.flips, swap, training.grey_jitter)


class VolumeSampler:
    """Random patches from image volumes, labels cropped to the patch's output grid."""

    def __init__(self, volumes: list[tuple[ChannelFirst, Any, list[tuple[int, int]]]], geometry: Geometry,
                 patch: Shape, n_classes: int, ignore_label: int | None, squeeze: bool = False):
        self.volumes = volumes  # (raw, label, region per axis)
        self.squeeze = squeeze  # 2D nets: patches are (C, 1, y, x) slices of stacks, handed on as (C, y, x)
        self.geometry = geometry
        self.patch = patch
        self.out = geometry.plain_output_shape(patch)
        self.n_classes = n_classes
        self.ignore_label = ignore_label
        self.weights = np.array([math.prod(hi - lo - p + 1 for (lo, hi), p in zip(region, patch, strict=True))
                                 for _, _, region in volumes], dtype=np.float64)
        self.weights /= self.weights.sum()

    def sample(self, rng: np.random.Generator, n: int, augmentation: Augmentation | None = None) -> Batch:
        xs, ys = [], []
        for _ in range(n):
            raw, label, region = self.volumes[rng.choice(len(self.volumes), p=self.weights)]
            start = [int(rng.integers(lo, hi - p + 1)) for (lo, hi), p in zip(region, self.patch, strict=True)]
            x, y = self.read(raw, label, start)
            if self.squeeze:
                x, y = x[:, 0], y[0]
            if augmentation is not None:
                x, y = augmentation.apply(x, y, rng)
            xs.append(x)
            ys.append(y)
        return np.stack(xs), np.stack(ys)

    def read(self, raw: ChannelFirst, label: Any, start: list[int]) -> tuple[np.ndarray, np.ndarray]:
        g = self.geometry
        x = to_float32(raw.read([slice(s, s + p) for s, p in zip(start, self.patch, strict=True)]))
        box = tuple(slice(s + o, s + o + t * (m - 1) + 1, t)
                    for s, o, t, m in zip(start, g.offset, g.stride, self.out, strict=True))
        return x, read_box(label, box).astype(np.int64)  # a damaged chunk is one line, as for the image


class ArraySampler:
    """Random rows of patch arrays ``(N, C, *patch)`` or feature vectors ``(N, F)`` with labels ``(N,)``."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y.astype(np.int64)

    def sample(self, rng: np.random.Generator, n: int, augmentation: Augmentation | None = None) -> Batch:
        rows = rng.integers(0, len(self.x), size=n)
        xs = []
        for row in rows:
            x = to_float32(np.asarray(self.x[row]))
            if augmentation is not None:
                x, _ = augmentation.apply(x, None, rng)
            xs.append(x)
        return np.stack(xs), self.y[rows]

    def all(self) -> Batch:
        return to_float32(np.asarray(self.x)), self.y


def check_labels(y: np.ndarray, n_classes: int, ignore_label: int | None, where: str = "",
                 origin: tuple[int, ...] = ()) -> None:
    """Raise naming the first label outside ``0..n_classes-1`` (and not the ignore label): its value,
    its position (``origin`` plus the index in ``y``) and ``where`` it comes from."""
    valid = (y >= 0) & (y < n_classes)
    if ignore_label is not None:
        valid |= y == ignore_label
    if valid.all():
        return
    index = tuple(int(i) for i in np.argwhere(~valid)[0])
    position = tuple(o + i for o, i in zip(origin or (0,) * len(index), index, strict=True))
    ignore = f" or the ignore_label {ignore_label}" if ignore_label is not None else ""
    source = f"{where}: " if where else ""
    raise DensePredError(f"{source}label {int(y[index])} at position {list(position)} is out of range; labels must "
                         f"be 0..{n_classes - 1}{ignore} (set training.ignore_label for unlabelled voxels)")


def check_label_volume(label: Any, n_classes: int, ignore_label: int | None, where: str,
                       block_voxels: int = 2**24) -> None:
    """Check every label of a volume once, in slabs along the first axis, before training starts."""
    shape = tuple(label.shape)
    per_slice = max(math.prod(shape[1:]), 1)
    step = max(1, block_voxels // per_slice)
    for start in range(0, shape[0], step):
        block = read_box(label, (slice(start, start + step),))
        check_labels(block, n_classes, ignore_label, where, (start,) + (0,) * (len(shape) - 1))


def build_samplers(cfg: Config, geometry: Geometry | None) -> tuple[Any, Any | None]:
    """Training and validation samplers for a config (validation None when there is none)."""
    training = cfg.training
    assert training is not None
    if not training.data:
        raise DensePredError("training.data is empty; add e.g. "
                             '[{ raw = "train.h5:raw", label = "train.h5:label" }]')
    net = cfg.network
    pairs = [_open_pair(pair, cfg.base_dir) for pair in training.data]
    val_pairs = [_open_pair(pair, cfg.base_dir) for pair in training.validation]
    if geometry is None or _are_patch_arrays(pairs, net.dims):
        return _array_samplers(cfg, pairs, val_pairs, geometry)
    patch = training.patch_size
    assert patch is not None
    stack = net.dims == 2  # 2D images and stacks of them alike: every 2D patch is a slice of a stack
    if stack:
        geometry, patch = geometry.stacked(), (1, *patch)
    volumes = [_volume(raw, label, net.in_channels, net.dims, patch, spec, stack) for raw, label, spec in pairs]
    val_volumes = [_volume(raw, label, net.in_channels, net.dims, patch, spec, stack)
                   for raw, label, spec in val_pairs]
    for _, label, spec in pairs + val_pairs:
        check_label_volume(label, net.n_classes, training.ignore_label, spec)
    train_volumes, held_out = [], []
    if val_volumes or training.validation_fraction == 0:
        train_volumes = volumes
        held_out = val_volumes
    else:
        for raw, label, region in volumes:
            fit, rest = _split_region(region, patch, training.validation_fraction, raw)
            train_volumes.append((raw, label, fit))
            held_out.append((raw, label, rest))

    def make(vols: list) -> VolumeSampler:
        return VolumeSampler(vols, geometry, patch, net.n_classes, training.ignore_label, squeeze=stack)

    return make(train_volumes), (make(held_out) if held_out else None)


def _open_pair(pair: DataPair, base: Path) -> tuple[Any, Any, str]:
    for spec in (pair.raw, pair.label):  # a densepred output used as data must be finished
        check_finished(ArraySpec.parse(spec, base))
    return open_array(pair.raw, base), open_array(pair.label, base), f"{pair.raw} / {pair.label}"


def _are_patch_arrays(pairs: list[tuple[Any, Any, str]], dims: int) -> bool:
    return all(np.ndim(label) == 1 or len(label.shape) == 1 for _, label, _ in pairs) and dims > 0


def _volume(raw: Any, label: Any, channels: int, dims: int, patch: Shape, spec: str, stack: bool = False):
    """An image, its labels and the region patches come from; with ``stack`` a 2D image is a
    stack of one slice."""
    image = ChannelFirst(raw, channels, dims)
    spatial = "ZYX"[3 - len(image.spatial_shape):]
    if tuple(label.shape) == (1, *image.spatial_shape):  # labels with a channel axis of one (ilastik's exports)
        label = AxesView(label, "C" + spatial, list(spatial))
    if tuple(label.shape) != image.spatial_shape:
        raise DensePredError(f"{spec}: label shape {list(label.shape)} differs from the image's spatial "
                             f"shape {list(image.spatial_shape)}")
    if stack and not image.stacked:
        image, label = OneSliceStack(image), _OneSliceLabels(label)
    if any(s < p for s, p in zip(image.spatial_shape, patch, strict=True)):
        raise DensePredError(f"{spec}: image {list(image.spatial_shape)} is smaller than the training "
                             f"patch {list(patch[1:] if stack else patch)}")
    return image, label, [(0, s) for s in image.spatial_shape]


class _OneSliceLabels:
    """A 2D label image seen as a stack of one slice, like :class:`~densepred.io.images.OneSliceStack`."""

    def __init__(self, label: Any):
        self.label, self.shape = label, (1, *label.shape)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self.label[key[1:]])[None]


def _split_region(region: list[tuple[int, int]], patch: Shape, fraction: float, raw: ChannelFirst):
    """Hold out the last ``fraction`` of the axis with the most room for patches."""
    axis = max(range(len(region)), key=lambda a: (region[a][1] - region[a][0]) / patch[a])
    lo, hi = region[axis]
    split = hi - max(patch[axis], round((hi - lo) * fraction))
    if split - lo < patch[axis]:
        raise DensePredError(
            f"image {list(raw.spatial_shape)} is too small to hold out validation_fraction = {fraction} "
            f"along axis {axis} with patches of {list(patch)}; give training.validation data or "
            "set validation_fraction = 0"
        )
    fit, rest = list(region), list(region)
    fit[axis], rest[axis] = (lo, split), (split, hi)
    return fit, rest


def _array_samplers(cfg: Config, pairs, val_pairs, geometry: Geometry | None):
    net, training = cfg.network, cfg.training
    assert training is not None
    expected = (net.in_channels,) if geometry is None else (net.in_channels, *geometry.fov)

    def load(raw: Any, label: Any, spec: str) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(raw)
        if geometry is not None and x.ndim == len(expected) and net.in_channels == 1:
            x = x[:, None]
        y = np.asarray(label).reshape(-1)
        check_labels(y, net.n_classes, training.ignore_label, spec)
        if tuple(x.shape[1:]) != expected or len(x) != len(y):
            raise DensePredError(
                f"{spec}: data of shape {list(x.shape)} with {len(y)} labels is invalid; expected "
                f"(N, {', '.join(map(str, expected))}) and N labels"
            )
        return x, y

    data = [load(*pair) for pair in pairs]
    x = np.concatenate([d[0] for d in data])
    y = np.concatenate([d[1] for d in data])
    if val_pairs:
        val = [load(*pair) for pair in val_pairs]
        vx, vy = np.concatenate([d[0] for d in val]), np.concatenate([d[1] for d in val])
    elif training.validation_fraction > 0:
        order = np.random.default_rng(training.seed).permutation(len(x))
        n_val = max(1, round(len(x) * training.validation_fraction))
        if n_val >= len(x):
            raise DensePredError(f"{len(x)} samples are too few to hold out a validation fraction")
        x, vx, y, vy = x[order[n_val:]], x[order[:n_val]], y[order[n_val:]], y[order[:n_val]]
    else:
        return ArraySampler(x, y), None
    return (ArraySampler(x, y),
            ArraySampler(vx, vy))
