"""Three ways to the same dense output of a network on one input tile.

* ``naive`` (shift-and-stitch): one strided forward per output phase, interleaved. The
  reference, and what ELEKTRONN did without MFP.
* ``mfp`` (max fragment pooling): after each pool, all pooling offsets are kept as
  fragments in the batch; at the end they are interleaved back. Dense position along an
  axis is ``o_1 + p_1*o_2 + p_1*p_2*o_3 + ... + T*m`` (first pool's offset least significant).
* ``dilated`` (a trous): pools run with stride 1 and dilation ``s_l``, later convolutions are
  dilated by the product of the pools before them.

All work on the eval-mode network: dropout is off and batch norm, folded into the preceding
convolution, uses its running statistics. Input ``(B, C, *n)``, output logits
``(B, K, *(n - FOV + 1))`` for any ``n >= FOV``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DensePredError
from ..geometry import SMALL_CONV_INPUTS, STREAM_SLAB, Geometry
from ..system import tune_cpu_allocator
from .build import ACTIVATION_FUNCTIONS, DenseNet
from .precision import FLOAT32, Precision, precision_flags, precision_for

ENGINE_MODES = ("mfp", "dilated", "naive", "stream")
CONV_FN = {2: F.conv2d, 3: F.conv3d}
MAX_POOL = {2: F.max_pool2d, 3: F.max_pool3d}
CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}
CHANNELS_LAST_DIMS = {4: torch.channels_last, 5: torch.channels_last_3d}  # by tensor rank


@dataclass(frozen=True)
class Stage:
    """One eval-mode layer: convolution (batch norm folded in), activation, max-pool."""

    weight: torch.Tensor
    bias: torch.Tensor
    activation: str | None
    pool: tuple[int, ...]

    @property
    def pools(self) -> bool:
        return any(p > 1 for p in self.pool)


def eval_stages(net: DenseNet, device: torch.device, dtype: torch.dtype) -> list[Stage]:
    """The net's layers as eval-mode stages on ``device`` in ``dtype`` (batch norm folded)."""
    stages = []
    for block in net.blocks:
        conv = block.transform
        weight = conv.weight.detach().to(torch.float64)
        bias = conv.bias.detach().to(torch.float64)
        if isinstance(block.norm, nn.modules.batchnorm._BatchNorm):
            weight, bias = _fold_batchnorm(weight, bias, block.norm)
        if weight.ndim > 2:
            weight = weight.contiguous(memory_format=CHANNELS_LAST[weight.ndim - 2])
        stages.append(Stage(weight.to(device, dtype), bias.to(device, dtype), block.activation, block.pool))
    return stages


def _fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    mean = norm.running_mean.detach().to(torch.float64)
    var = norm.running_var.detach().to(torch.float64)
    gamma = norm.weight.detach().to(torch.float64) if norm.affine else torch.ones_like(mean)
    beta = norm.bias.detach().to(torch.float64) if norm.affine else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + norm.eps)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    return weight * scale.reshape(shape), (bias - mean) * scale + beta


class DenseEngine:
    """Dense logits of one network, by one mode, on batches of input tiles.

    Example:
        >>> engine = DenseEngine(net, "mfp", torch.device("cpu"))       # doctest: +SKIP
        >>> logits = engine(torch.rand(1, 1, 108, 108, 108))           # doctest: +SKIP
    """

    def __init__(self, net: DenseNet, mode: str, device: torch.device, precision: Precision | str = FLOAT32):
        if mode not in ENGINE_MODES:
            raise DensePredError(f"mode {mode!r} is invalid; valid: {', '.join(ENGINE_MODES)}")
        if net.geometry is None:
            raise DensePredError("networks with dims = 0 have no dense output; use class_probabilities")
        self.geometry: Geometry = net.geometry
        self.mode = mode
        self.device = device
        self.precision = precision_for(precision, device)
        self.dtype = self.precision.dtype
        self.stages = eval_stages(net, device, self.dtype)
        self.dims = self.geometry.ndim
        if device.type == "cpu":
            tune_cpu_allocator()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self._input(x)
        with torch.inference_mode(), precision_flags(self.precision):
            if self.mode == "mfp":
                return self._mfp(x)
            if self.mode == "dilated":
                return dilated_forward(self.stages, x)
            if self.mode == "stream":
                return stream_forward(self.stages, x, STREAM_SLAB)
            return naive_forward(self.stages, x, self.geometry)

    def stream(self) -> Callable[[torch.Tensor], torch.Tensor | None]:
        """A fresh stream (``mode="stream"``): push input slabs in order, get the logits of the
        output slices each completes (:class:`StreamState`)."""
        state = StreamState(self.stages, self.dims)

        def push(x: torch.Tensor) -> torch.Tensor | None:
            x = self._input(x)
            with torch.inference_mode(), precision_flags(self.precision):
                return state.push(x)

        return push

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the device in the engine's dtype, channels-last where that is faster: oneDNN
        convolutions on the CPU, and cuDNN's 16-bit ones (tensor cores)."""
        x = x.to(self.device, self.dtype)
        if x.device.type == "cpu" or self.precision.reduced:
            x = x.contiguous(memory_format=CHANNELS_LAST[self.dims])
        return x

    def _mfp(self, x: torch.Tensor) -> torch.Tensor:
        # A tile that is not MFP-valid (a tile clipped to a small image) is padded at the
        # high end up to the next valid size; every kept output's window lies in real data.
        size = tuple(x.shape[2:])
        valid = self.geometry.nearest_valid(size, "mfp")[1]
        if valid != size:
            pad = [v - s for s, v in zip(size, valid, strict=True)]
            x = F.pad(x, [q for p in reversed(pad) for q in (0, p)])
        out = mfp_forward(self.stages, x)
        dense = self.geometry.dense_output_shape(size)
        return out[(..., *(slice(0, d) for d in dense))]


class StackEngine:
    """A 2D engine run over a stack: ``(B, C, Z, Y, X)`` tiles become ``B * Z`` slices of one
    forward pass, and the logits ``(B, K, Z, Y', X')`` come back in the stack's layout."""

    def __init__(self, engine: DenseEngine):
        self.engine = engine
        self.mode, self.device = engine.mode, engine.device
        self.geometry = engine.geometry.stacked()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, depth = x.shape[:3]
        slices = x.permute(0, 2, 1, 3, 4).reshape(batch * depth, channels, *x.shape[3:])
        logits = self.engine(slices)
        return logits.reshape(batch, depth, *logits.shape[1:]).permute(0, 2, 1, 3, 4)


def plain_forward(stages: list[Stage], x: torch.Tensor) -> torch.Tensor:
    """The strided forward (pools with stride p, floor mode)."""
    pool = MAX_POOL[x.ndim - 2]
    for stage in stages:
        x = _conv_activate(x, stage)
        if stage.pools:
            x = pool(x, stage.pool, stage.pool)
    return x


def naive_forward(stages: list[Stage], x: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Shift-and-stitch: one strided forward per output phase, results interleaved."""
    dense = geometry.dense_output_shape(x.shape[2:])
    out = None
    for phase in itertools.product(*(range(min(t, d)) for t, d in zip(geometry.stride, dense, strict=True))):
        shifted = x[(..., *(slice(o, None) for o in phase))]
        y = plain_forward(stages, shifted)
        if out is None:
            out = y.new_empty((x.shape[0], y.shape[1], *dense))
        out[(..., *(slice(o, None, t) for o, t in zip(phase, geometry.stride, strict=True)))] = y
    assert out is not None
    return out


def dilated_forward(stages: list[Stage], x: torch.Tensor) -> torch.Tensor:
    """A trous: stride-1 pools with dilation, each later convolution dilated by the pools before it."""
    dilation = (1,) * (x.ndim - 2)
    for stage in stages:
        x = _conv_activate(x, stage, dilation)
        if stage.pools:
            x = sliding_max(x, stage.pool, dilation)
            dilation = tuple(d * p for d, p in zip(dilation, stage.pool, strict=True))
    return x


def stream_forward(stages: list[Stage], x: torch.Tensor, slab: int) -> torch.Tensor:
    """The dilated network evaluated ``slab`` input slices at a time along the first spatial axis
    (:class:`StreamState`); the numbers are those of :func:`dilated_forward`."""
    state = StreamState(stages, x.ndim - 2)
    outputs = [out for start in range(0, x.shape[2], slab) if (out := state.push(x[:, :, start:start + slab]))
               is not None]
    return torch.cat(outputs, dim=2)


class StreamState:
    """The dilated network fed slab by slab along the first spatial axis; each output slice is
    computed once.

    Each operation keeps the last ``(k - 1) * d`` slices of its input (its halo along that
    axis) in a buffer that new slabs are copied in behind; the operation runs on a view of the
    halo plus the new slices, so memory depends on the slab and the cross-section, never on
    how many slabs are pushed, and no buffer is allocated after the first slabs (a shorter last
    slab uses the front of its buffer). After each slab the halo moves to the front::

        buffer    [ halo | new ]      -> op(halo + new), then [ last halo | next new ]
    """

    def __init__(self, stages: list[Stage], dims: int):
        self.ops = _stream_ops(stages, dims)
        self.buffers: list[torch.Tensor | None] = [None] * len(self.ops)
        self.starts = [0] * len(self.ops)  # where each op's kept slices begin in its buffer
        self.counts = [0] * len(self.ops)  # how many slices each op keeps
        self.slab = 0  # the most slices pushed at once

    def push(self, x: torch.Tensor) -> torch.Tensor | None:
        """The output slices ``x`` completes (``None`` while the first halos fill)."""
        self.slab = max(self.slab, x.shape[2])
        h = x
        for i, (apply, halo) in enumerate(self.ops):
            view = self._append(i, h, halo)
            if view.shape[2] <= halo:  # not enough slices yet for one output slice: keep them all
                self.counts[i] = view.shape[2]
                return None
            h = apply(view)
            self.starts[i] += view.shape[2] - halo
            self.counts[i] = halo
        return h

    def _append(self, i: int, new: torch.Tensor, halo: int) -> torch.Tensor:
        """The kept slices of op ``i`` followed by ``new``, as one view of its buffer."""
        buffer, start, count = self.buffers[i], self.starts[i], self.counts[i]
        need = count + new.shape[2]
        if buffer is None or buffer.shape[3:] != new.shape[3:] or need > buffer.shape[2]:
            buffer, start = self._grow(i, new, need, halo), 0
        elif start + need > buffer.shape[2]:  # full: move the kept slices to the front
            _shift_front(buffer, start, count)
            start = self.starts[i] = 0
        buffer[:, :, start + count:start + need].copy_(new)
        return buffer[:, :, start:start + need]

    def _grow(self, i: int, new: torch.Tensor, need: int, halo: int) -> torch.Tensor:
        old, start, count = self.buffers[i], self.starts[i], self.counts[i]
        # Sized at once for the steady state, the halo plus a slab: an op deeper in the net
        # gets fewer slices from the first slabs, and a buffer grown then (a larger one while
        # the old one lived) left holes in the heap that raised neuro3d's peak by a third
        # (docs/BENCHMARKS.md, peak memory against --memory-limit).
        size = max(need, halo + self.slab)
        shape = (*new.shape[:2], size, *new.shape[3:])
        layout = CHANNELS_LAST_DIMS.get(new.dim())
        if layout is None or not new.is_contiguous(memory_format=layout):
            layout = torch.contiguous_format
        # allocated in its layout at once: converting an empty buffer cost a second one
        buffer = torch.empty(shape, dtype=new.dtype, device=new.device, memory_format=layout)
        if old is not None and count:
            buffer[:, :, :count].copy_(old[:, :, start:start + count])
        self.buffers[i], self.starts[i] = buffer, 0
        return buffer


def _shift_front(buffer: torch.Tensor, start: int, count: int) -> None:
    """Move slices ``[start, start + count)`` of ``buffer`` to the front, in chunks of ``start``
    slices so that no chunk overlaps the one it is copied from."""
    for offset in range(0, count, start):
        n = min(start, count - offset)
        buffer[:, :, offset:offset + n].copy_(buffer[:, :, start + offset:start + offset + n])


def _stream_ops(stages: list[Stage], dims: int) -> list[tuple[Callable[[torch.Tensor], torch.Tensor], int]]:
    """The dilated network as a list of (operation, halo along the first axis)."""
    ops: list[tuple[Callable[[torch.Tensor], torch.Tensor], int]] = []
    dilation = (1,) * dims
    for stage in stages:
        kernel = stage.weight.shape[2]
        ops.append((functools.partial(_conv_activate, stage=stage, dilation=dilation), (kernel - 1) * dilation[0]))
        if stage.pools:
            ops.append((functools.partial(sliding_max, pool=stage.pool, dilation=dilation),
                        (stage.pool[0] - 1) * dilation[0]))
            dilation = tuple(d * p for d, p in zip(dilation, stage.pool, strict=True))
    return ops


def mfp_forward(stages: list[Stage], x: torch.Tensor) -> torch.Tensor:
    """Max fragment pooling on an MFP-valid input; returns the interleaved dense logits."""
    batch, pools = x.shape[0], []
    for stage in stages:
        x = _conv_activate(x, stage)
        if stage.pools:
            x = split_fragments(sliding_max(x, stage.pool), stage.pool)
            pools.append(stage.pool)
    return interleave_fragments(x, pools, batch) if pools else x


def sliding_max(x: torch.Tensor, pool: tuple[int, ...], dilation: tuple[int, ...] | None = None) -> torch.Tensor:
    """Max-pool with stride 1 (and a dilation), one axis at a time.

    The same numbers as ``max_pool3d(x, pool, 1, 0, dilation)``, without the int64 index
    tensor that PyTorch's CPU pooling allocates (twice the output's size, fresh pages each
    time); the box maximum is separable, so this is ``sum(p - 1)`` elementwise maxima.
    """
    dilation = dilation or (1,) * len(pool)
    for axis, (p, d) in enumerate(zip(pool, dilation, strict=True)):
        if p == 1:
            continue
        dim, size = axis + 2, x.shape[axis + 2] - (p - 1) * d
        y = torch.maximum(x.narrow(dim, 0, size), x.narrow(dim, d, size))
        for i in range(2, p):
            torch.maximum(y, x.narrow(dim, i * d, size), out=y)
        x = y
    return x


def split_fragments(x: torch.Tensor, pool: tuple[int, ...]) -> torch.Tensor:
    """``(N, C, *(m*p))`` -> ``(N*prod(p), C, *m)``; fragment ``o`` holds positions ``o + p*i``.

    The result keeps a channels-last layout, so the next convolution needs no copy.
    """
    n, channels, dims = x.shape[0], x.shape[1], len(pool)
    sizes = [s // p for s, p in zip(x.shape[2:], pool, strict=True)]
    grid = x.permute(0, *range(2, 2 + dims), 1)  # (N, *L, C): free for channels-last input
    grid = grid.reshape(n, *(v for a in range(dims) for v in (sizes[a], pool[a])), channels)
    order = [0, *(2 + 2 * a for a in range(dims)), *(1 + 2 * a for a in range(dims)), 1 + 2 * dims]
    fragments = grid.permute(order).reshape(n * math.prod(pool), *sizes, channels)
    return fragments.permute(0, dims + 1, *range(1, dims + 1))


def interleave_fragments(x: torch.Tensor, pools: list[tuple[int, ...]], batch: int) -> torch.Tensor:
    """Inverse of the fragment splits: ``(B*F, K, *m)`` -> ``(B, K, *(T*m))``.

    The batch is nested as ``(B, fragments of pool 1, ..., fragments of pool L)``; along an
    axis, dense position ``o_1 + p_1*(o_2 + p_2*(... + p_L*m))`` puts ``m`` first in C order.
    """
    dims, layers = len(pools[0]), len(pools)
    classes, sizes = x.shape[1], x.shape[2:]
    x = x.reshape(batch, *(p for pool in pools for p in pool), classes, *sizes)
    order = [0, 1 + layers * dims]
    for a in range(dims):
        order.append(2 + layers * dims + a)
        order.extend(1 + layer * dims + a for layer in reversed(range(layers)))
    dense = [sizes[a] * math.prod(pool[a] for pool in pools) for a in range(dims)]
    return x.permute(order).reshape(batch, classes, *dense)


def _conv_activate(x: torch.Tensor, stage: Stage, dilation: tuple[int, ...] | None = None) -> torch.Tensor:
    """Convolution then activation, in place on the fresh output, kept channels-last on the CPU."""
    dims = x.ndim - 2
    dilation = dilation or (1,) * dims
    if x.device.type == "cpu" and math.prod(stage.weight.shape[1:]) <= SMALL_CONV_INPUTS:
        y = _small_conv(x, stage, dilation)
    else:
        y = CONV_FN[dims](x, stage.weight, stage.bias, dilation=dilation)
        if y.device.type == "cpu":
            y = y.contiguous(memory_format=CHANNELS_LAST[dims])
    if stage.activation is None:
        return y
    inplace = IN_PLACE.get(stage.activation)
    return inplace(y) if inplace is not None else ACTIVATION_FUNCTIONS[stage.activation](y)


def _small_conv(x: torch.Tensor, stage: Stage, dilation: tuple[int, ...]) -> torch.Tensor:
    """A convolution with few inputs per output (a first layer) as one matrix product.

    oneDNN leaves a one-channel input's convolution in the default layout, and converting a
    map of 80 channels afterwards costs more than the convolution; this writes the output
    channels-last directly.
    """
    weight = stage.weight
    dims, (out_channels, in_channels), kernel = x.ndim - 2, weight.shape[:2], weight.shape[2:]
    spatial = x.shape[2:]
    out = [n - (k - 1) * d for n, k, d in zip(spatial, kernel, dilation, strict=True)]
    strides = x.stride()
    windows = x.as_strided(
        (x.shape[0], *out, in_channels, *kernel),
        (strides[0], *strides[2:], strides[1], *(s * d for s, d in zip(strides[2:], dilation, strict=True))),
    )
    columns = windows.reshape(-1, in_channels * math.prod(kernel))
    if x.shape[0] == 1 and out_channels <= FEW_OUTPUTS:
        # a map of a few channels (a net of one layer): class by class, the C-ordered layout the
        # softmax and the writer read fastest (1.8x faster than channels-last and a reorder)
        y = torch.addmm(stage.bias[:, None], weight.reshape(out_channels, -1), columns.t())
        return y.view(1, out_channels, *out)
    y = torch.addmm(stage.bias, columns, weight.reshape(out_channels, -1).t())
    return y.view(x.shape[0], *out, out_channels).permute(0, dims + 1, *range(1, dims + 1))


FEW_OUTPUTS = 4  # see _small_conv

IN_PLACE = {
    "relu": torch.relu_,
    "leaky_relu": lambda x: F.leaky_relu_(x, 0.01),
    "elu": F.elu_,
    "silu": lambda x: F.silu(x, inplace=True),
    "tanh": torch.tanh_,
    "sigmoid": torch.sigmoid_,
    "linear": lambda x: x,
}
