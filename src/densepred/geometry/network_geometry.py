"""Geometry of a valid-convolution network: plain integer arithmetic, no torch, no I/O.

Per spatial axis, for layers ``l`` with kernel ``k_l``, pool ``p_l`` and ``s_l`` the
product of the pools before layer ``l``::

    FOV    = 1 + sum_l (k_l - 1) * s_l + sum_l (p_l - 1) * s_l
    stride = prod_l p_l                                   (T)
    offset = (FOV - 1) // 2

Dense output voxel ``j`` is the prediction for input window ``[j, j + FOV)``::

    input   |<----------------------- n ----------------------->|
            [ offset |<------ n - FOV + 1 outputs ------>| rest ]
    window  [j ........ FOV ........ j+FOV)

Valid input sizes per axis, by mode:

* ``plain`` (strided forward, training patches): every conv output divisible by its pool;
  the sizes ``FOV + T*m``.
* ``mfp`` (max fragment pooling): per pooling layer ``(conv_out - p + 1) % p == 0``;
  the sizes ``FOV - 1 + T*m`` (m >= 1), dense output ``T*m``.
* ``dilated`` and ``naive``: any ``n >= FOV``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import DensePredError

Shape = tuple[int, ...]
MODES = ("plain", "mfp", "dilated", "naive", "stream")


@dataclass(frozen=True)
class LayerGeometry:
    """One convolution (valid, stride 1) followed by an optional max-pool of size ``pool``."""

    name: str
    kernel: Shape
    pool: Shape
    in_channels: int
    out_channels: int

    @property
    def flops_per_voxel(self) -> int:
        """Multiply-adds x 2 for one output voxel of this convolution."""
        return 2 * math.prod(self.kernel) * self.in_channels * self.out_channels


@dataclass(frozen=True)
class LayerRow:
    """One row of the dimension table (see :meth:`Geometry.table`)."""

    name: str
    kernel: Shape
    pool: Shape
    channels: int
    stride: Shape  # total stride after this layer's pool
    receptive_field: Shape  # field of view of one output of this layer
    map_shape: Shape | None  # plain forward output of this layer for the given input
    fragments: int | None  # MFP: fragments in the batch after this layer
    fragment_shape: Shape | None  # MFP: shape of each fragment after this layer


class Geometry:
    """Shapes, borders and valid sizes of a stack of valid convolutions and pools.

    Example:
        >>> g = Geometry([LayerGeometry("c1", (3, 3), (2, 2), 1, 8),
        ...               LayerGeometry("out", (3, 3), (1, 1), 8, 2)])
        >>> g.fov, g.stride, g.offset
        ((8, 8), (2, 2), (3, 3))
        >>> g.dense_output_shape((20, 17))
        (13, 10)
    """

    def __init__(self, layers: Sequence[LayerGeometry]):
        if not layers:
            raise ValueError("a geometry needs at least one layer")
        self.layers = tuple(layers)
        self.ndim = len(layers[0].kernel)
        fov, stride = [1] * self.ndim, [1] * self.ndim
        for layer in self.layers:
            for a in range(self.ndim):
                fov[a] += (layer.kernel[a] - 1 + layer.pool[a] - 1) * stride[a]
                stride[a] *= layer.pool[a]
        self.fov: Shape = tuple(fov)
        self.stride: Shape = tuple(stride)
        self.offset: Shape = tuple((f - 1) // 2 for f in fov)
        self.border_high: Shape = tuple(f - 1 - o for f, o in zip(fov, self.offset, strict=True))

    def stacked(self) -> Geometry:
        """This 2D geometry applied to every slice of a stack: a leading axis with kernel and
        pool 1 (field of view 1, stride 1, no border), so tiles, regions and mirroring extend
        to ``(Z, Y, X)`` unchanged."""
        if self.ndim != 2:
            raise DensePredError(f"only 2D networks run over stacks of images; this one has {self.ndim} axes")
        return Geometry([LayerGeometry(layer.name, (1, *layer.kernel), (1, *layer.pool), layer.in_channels,
                                       layer.out_channels) for layer in self.layers])

    # -- sizes ------------------------------------------------------------------------

    @property
    def parameter_count(self) -> int:
        """Weights and biases of all layers (batch norm excluded)."""
        return sum(math.prod(layer.kernel) * layer.in_channels * layer.out_channels + layer.out_channels
                   for layer in self.layers)

    @property
    def flops_per_voxel(self) -> int:
        """Useful FLOPs per dense output voxel: ``sum_l 2 * prod(k_l) * Cin_l * Cout_l``."""
        return sum(layer.flops_per_voxel for layer in self.layers)

    def dense_output_shape(self, input_shape: Iterable[int]) -> Shape:
        """Dense output of an input: ``n - FOV + 1`` per axis (may be <= 0 if too small)."""
        return tuple(n - f + 1 for n, f in zip(self._shape(input_shape), self.fov, strict=True))

    def plain_output_shape(self, input_shape: Iterable[int]) -> Shape:
        """Strided output of the plain forward: ``(n - FOV) // T + 1`` per axis."""
        return tuple(
            (n - f) // t + 1
            for n, f, t in zip(self._shape(input_shape), self.fov, self.stride, strict=True)
        )

    def input_shape_for(self, output_shape: Iterable[int]) -> Shape:
        """The input that yields a dense output of ``output_shape``: ``out + FOV - 1``."""
        return tuple(o + f - 1 for o, f in zip(self._shape(output_shape), self.fov, strict=True))

    # -- validity -----------------------------------------------------------------------

    def is_valid(self, input_shape: Iterable[int], mode: str) -> bool:
        """Whether ``input_shape`` is a valid input for ``mode`` (see the module docstring)."""
        shape = self._shape(input_shape)
        return all(self._axis_valid(a, n, mode) for a, n in enumerate(shape))

    def nearest_valid(self, input_shape: Iterable[int], mode: str) -> tuple[Shape | None, Shape]:
        """The nearest valid shapes at or below and at or above ``input_shape``, per axis.

        ``below`` is None when some axis has no valid size at or below the request.
        """
        shape = self._shape(input_shape)
        below, above = [], []
        for a, n in enumerate(shape):
            below.append(self._axis_valid_below(a, n, mode))
            above.append(self._axis_valid_above(a, n, mode))
        return (None if None in below else tuple(below)), tuple(above)  # type: ignore[arg-type]

    def nearest_valid_text(self, input_shape: Iterable[int], mode: str) -> str:
        """The nearest valid shapes as text for error messages, e.g. ``"[101, 101] or [109, 109]"``."""
        below, above = self.nearest_valid(input_shape, mode)
        return " or ".join(str(list(s)) for s in (below, above) if s is not None)

    def smallest_valid(self, mode: str) -> Shape:
        """The smallest valid input for ``mode``."""
        return self.nearest_valid((1,) * self.ndim, mode)[1]

    def _axis_valid(self, axis: int, n: int, mode: str) -> bool:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        if n < self.fov[axis]:
            return False
        if mode in ("dilated", "naive", "stream"):
            return True
        return _axis_sizes(self._axis_layers(axis), n, mode) is not None

    def _axis_valid_below(self, axis: int, n: int, mode: str) -> int | None:
        # Valid plain and MFP sizes repeat with period T, so one period holds the answer.
        for m in range(n, max(self.fov[axis], n - 2 * self.stride[axis]) - 1, -1):
            if self._axis_valid(axis, m, mode):
                return m
        return None

    def _axis_valid_above(self, axis: int, n: int, mode: str) -> int:
        start = max(n, self.fov[axis])
        for m in range(start, start + 2 * self.stride[axis] + 1):
            if self._axis_valid(axis, m, mode):
                return m
        raise AssertionError(f"no valid {mode} size found above {n} on axis {axis}")

    def _axis_layers(self, axis: int) -> list[tuple[int, int]]:
        return [(layer.kernel[axis], layer.pool[axis]) for layer in self.layers]

    def _shape(self, shape: Iterable[int]) -> Shape:
        shape = tuple(int(s) for s in shape)
        if len(shape) != self.ndim:
            raise DensePredError(
                f"shape {list(shape)} has {len(shape)} axes; this network has {self.ndim} spatial axes"
            )
        return shape

    # -- per-layer sizes (tables, FLOPs, memory) ---------------------------------------

    def receptive_fields(self) -> list[Shape]:
        """Field of view of one output of each layer, after its pool."""
        fields, fov, stride = [], [1] * self.ndim, [1] * self.ndim
        for layer in self.layers:
            for a in range(self.ndim):
                fov[a] += (layer.kernel[a] - 1 + layer.pool[a] - 1) * stride[a]
                stride[a] *= layer.pool[a]
            fields.append(tuple(fov))
        return fields

    def table(self, input_shape: Iterable[int] | None = None) -> list[LayerRow]:
        """Per-layer kernel, pool, stride, receptive field and map shapes for an input."""
        shape = None if input_shape is None else self._shape(input_shape)
        per_axis_plain = per_axis_mfp = None
        if shape is not None:
            per_axis_plain = [_axis_sizes(self._axis_layers(a), n, "floor") for a, n in enumerate(shape)]
            if self.is_valid(shape, "mfp"):
                per_axis_mfp = [_axis_sizes(self._axis_layers(a), n, "mfp") for a, n in enumerate(shape)]
        rows, stride, fragments = [], [1] * self.ndim, 1
        for i, (layer, rf) in enumerate(zip(self.layers, self.receptive_fields(), strict=True)):
            stride = [s * p for s, p in zip(stride, layer.pool, strict=True)]
            fragments *= math.prod(layer.pool)
            map_shape = frag_shape = None
            if per_axis_plain is not None and all(sizes is not None for sizes in per_axis_plain):
                map_shape = tuple(sizes[i][1] for sizes in per_axis_plain)  # type: ignore[index]
            if per_axis_mfp is not None:
                frag_shape = tuple(sizes[i][1] for sizes in per_axis_mfp)  # type: ignore[index]
            rows.append(LayerRow(layer.name, layer.kernel, layer.pool, layer.out_channels,
                                 tuple(stride), rf, map_shape, fragments if frag_shape else None,
                                 frag_shape))
        return rows

    def conv_output_voxels(self, input_shape: Iterable[int], mode: str) -> list[int]:
        """Voxels each convolution computes for one input tile, by mode (all fragments or phases)."""
        shape = self._shape(input_shape)
        if not self.is_valid(shape, mode):
            raise DensePredError(f"input {list(shape)} is not valid for mode '{mode}'")
        per_axis = [self._axis_conv_voxels(a, n, mode) for a, n in enumerate(shape)]
        return [math.prod(axis[i] for axis in per_axis) for i in range(len(self.layers))]

    def _axis_conv_voxels(self, axis: int, n: int, mode: str) -> list[int]:
        layers = self._axis_layers(axis)
        if mode == "naive":
            totals = [0] * len(layers)
            for phase in range(min(self.stride[axis], n - self.fov[axis] + 1)):
                sizes = _axis_sizes(layers, n - phase, "floor")
                assert sizes is not None
                totals = [t + conv for t, (conv, _) in zip(totals, sizes, strict=True)]
            return totals
        if mode in ("dilated", "stream"):  # stream: the dilated network, slab by slab
            fields, result, before = self.receptive_fields(), [], 1
            for (k, _), rf, s in zip(layers, fields, self._strides_before(axis), strict=True):
                result.append(n - (before + (k - 1) * s) + 1)
                before = rf[axis]
            return result
        sizes = _axis_sizes(layers, n, "mfp" if mode == "mfp" else "floor")
        assert sizes is not None
        return [conv * s for (conv, _), s in zip(sizes, self._strides_before(axis), strict=True)] \
            if mode == "mfp" else [conv for conv, _ in sizes]

    def _strides_before(self, axis: int) -> list[int]:
        strides, s = [], 1
        for layer in self.layers:
            strides.append(s)
            s *= layer.pool[axis]
        return strides

    def flops(self, input_shape: Iterable[int], mode: str) -> int:
        """FLOPs the convolutions of ``mode`` spend on one input tile."""
        voxels = self.conv_output_voxels(input_shape, mode)
        return sum(v * layer.flops_per_voxel for v, layer in zip(voxels, self.layers, strict=True))

    def activation_bytes(self, input_shape: Iterable[int], mode: str, itemsize: int = 4,
                         unfold_up_to: int = 0) -> int:
        """Largest input-plus-output activation of one layer for one tile, in bytes.

        The dominant term of a tile's memory: a layer's input and output live together. A
        convolution with at most ``unfold_up_to`` inputs per output (``Cin * prod(kernel)``)
        is counted as computed on an unfolded copy of its input, one column per output.
        """
        shape = self._shape(input_shape)
        if mode == "naive":  # one phase at a time: the largest is an unshifted strided pass
            per_axis = [_axis_sizes(self._axis_layers(a), n, "floor") for a, n in enumerate(shape)]
            if any(sizes is None for sizes in per_axis):
                raise DensePredError(f"input {list(shape)} is smaller than the field of view {list(self.fov)}")
            voxels = [math.prod(sizes[i][0] for sizes in per_axis) for i in range(len(self.layers))]  # type: ignore[index]
        else:
            voxels = self.conv_output_voxels(shape, mode)
        previous = math.prod(shape)
        largest = 0
        for v, layer in zip(voxels, self.layers, strict=True):
            unfolded = layer.in_channels * math.prod(layer.kernel)
            columns = v * unfolded if unfolded <= unfold_up_to else 0
            largest = max(largest, previous * layer.in_channels + v * layer.out_channels + columns)
            previous = v
        return largest * itemsize


def _axis_sizes(layers: Sequence[tuple[int, int]], n: int, mode: str) -> list[tuple[int, int]] | None:
    """(conv output, pooled output) per layer on one axis, or None if ``n`` is invalid.

    ``mode`` is ``plain`` (conv output divisible by pool), ``floor`` (PyTorch's pooling, which
    drops a remainder that no complete window uses) or ``mfp`` (per fragment sizes).
    """
    sizes, c = [], n
    for k, p in layers:
        c -= k - 1
        if c < p:
            return None
        if mode == "plain" and c % p:
            return None
        if mode == "mfp" and (c - p + 1) % p:
            return None
        pooled = (c - p + 1) // p if mode == "mfp" else c // p
        sizes.append((c, pooled))
        c = pooled
    return sizes

