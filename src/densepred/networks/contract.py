"""The **tiling contract** of a model written elsewhere (:mod:`.foreign`), found by probing it
once on the CPU:

* ``factor`` - the total downsampling per axis: the product of the strides of its strided
  convolutions and poolings. Window origins must be multiples of it.
* ``crop`` - voxels the output loses per side (0 for same padding; a valid-convolution U-Net
  loses some): one forward of a probe window.
* ``scale`` - output voxels per input voxel (1; 1/2 for a model whose output is half its input,
  4 for one that upsamples 4x): from the outputs of two window sizes. Crop and context are
  counted in output voxels; :mod:`densepred.geometry.scale` tiles at scale 1 in output voxels.
* ``context`` - how far an output voxel's inputs reach on the low and high side: one NaN put
  in an input window spreads, in eval mode, exactly over the outputs that depend on it (for
  a model whose operators may drop a NaN, an ONNX graph, a large change up and down does).
  It is probed at every position modulo the factor (a U-Net's reach depends on it).
* ``verdict`` - exact tiling is possible unless something mixes the whole window: instance,
  group or layer norm over space, global pooling, attention (named), or a NaN that reaches
  every output.

Every field can be given instead of probed (``contract=TilingContract(...)`` or keyword
overrides; with the factor and the smallest input given, no size is probed). The sizes are
probed by :mod:`.contract_sizes`; the context and the verdict here. A model that
accepts one input size only (``fixed``) is tiled with windows of exactly that size. Probes are
cached on disk by a hash of the model's class and weights (:mod:`.contract_cache`).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import threading
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from ..errors import DensePredError
from ..geometry.scale import Pair, origin, scaled, unscaled
from ..geometry.scale import text as scale_text
from . import contract_cache

NON_LOCAL = (torch.nn.modules.instancenorm._InstanceNorm, torch.nn.GroupNorm, torch.nn.LayerNorm,
             torch.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool3d,
             torch.nn.AdaptiveMaxPool1d, torch.nn.AdaptiveMaxPool2d, torch.nn.AdaptiveMaxPool3d,
             torch.nn.MultiheadAttention, torch.nn.TransformerEncoderLayer, torch.nn.LocalResponseNorm)
SHIFT_TOLERANCE = 1e-5  # relative: float32 rounding between window sizes stays far below it
PROBE_VOXELS = 2**22  # the largest probe window (voxels); a larger context must be given


@dataclass(frozen=True)
class TilingContract:
    """How a model may be tiled; see the module docstring."""

    factor: tuple[int, ...]
    crop: tuple[int, ...]
    context: tuple[tuple[int, int], ...]
    exact: bool | None  # None: not probed yet
    reason: str = ""  # why exact tiling is impossible
    smallest: tuple[int, ...] = ()  # the smallest input per axis; it accepts smallest + k * factor
    fixed: tuple[bool, ...] = ()  # axes whose input size is fixed at ``smallest`` (a fixed-shape model)
    scale: tuple[Pair, ...] = ()  # output voxels per input voxel, (up, down) per axis; () at scale 1

    @property
    def pairs(self) -> tuple[Pair, ...]:
        return self.scale or ((1, 1),) * len(self.factor)

    def in_output_units(self) -> TilingContract:
        """The same contract at scale 1, counted in output voxels (factor and smallest input
        times the scale): what windows are placed by."""
        if not self.scale:
            return self
        return replace(self, factor=self.output_extent(self.factor), scale=(),
                       smallest=self.output_extent(self.smallest) if self.smallest else ())

    def output_extent(self, sizes: tuple[int, ...]) -> tuple[int, ...]:
        """Output voxels (before the crop) of input ``sizes``, rounded up."""
        return tuple(scaled(n, p) for n, p in zip(sizes, self.pairs, strict=True))

    def input_extent(self, sizes: tuple[int, ...]) -> tuple[int, ...]:
        """Input voxels of output ``sizes`` (whole multiples of the scale)."""
        return tuple(unscaled(n, p) for n, p in zip(sizes, self.pairs, strict=True))

    def origin(self) -> tuple[float, ...]:
        """The input voxel that output voxel 0 is centred on (the crop at scale 1)."""
        return tuple(c if p == (1, 1) else origin(c, p) for c, p in zip(self.crop, self.pairs, strict=True))

    def context_with(self, flips: list[tuple[int, ...]]) -> tuple[tuple[int, int], ...]:
        """The context windows must keep: the model's, or with flipped views (``flips`` other
        than ``[()]``) the larger side on both (a flipped view reaches the other way)."""
        return self.context if flips == [()] else tuple((max(a, b),) * 2 for a, b in self.context)

    def describe(self) -> str:
        context = ", ".join(f"{a}/{b}" for a, b in self.context)
        verdict = ("context and exactness not probed" if self.exact is None else
                   "exact tiling possible" if self.exact else f"not exactly tileable: {self.reason}")
        sizes = (f"input fixed at {list(self.smallest)}" if any(self.fixed) else
                 f"smallest input {list(self.smallest)}")
        scale = f", output scale {scale_text(self.scale)}" if any(p != (1, 1) for p in self.pairs) else ""
        return (f"factor {list(self.factor)}, crop {list(self.crop)}, context (low/high) {context}, {sizes}{scale}; "
                f"{verdict}")

    def valid(self, window: tuple[int, ...]) -> bool:
        """Whether the model accepts an input window of this size."""
        smallest = self.smallest or (1,) * len(window)
        fixed = self.fixed or (False,) * len(window)
        return all(w == m if x else w >= m and (w - m) % f == 0
                   for w, m, f, x in zip(window, smallest, self.factor, fixed, strict=True))


def kept_scale(pairs: tuple[Pair, ...]) -> tuple[Pair, ...]:
    """A contract's ``scale`` field: the pairs, or () when every axis is at scale 1."""
    return tuple(pairs) if any(p != (1, 1) for p in pairs) else ()


def non_local_layers(model: torch.nn.Module) -> list[str]:
    """Names (and types) of layers that mix a whole window."""
    return [f"{name} ({type(m).__name__})" for name, m in model.named_modules() if isinstance(m, NON_LOCAL)
            and not _identity_norm(m)]


def _identity_norm(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.LayerNorm) and len(module.normalized_shape) == 1  # over channels only


def from_fields(fields: dict[str, Any]) -> TilingContract:
    """A contract from its cached JSON fields (lists back to tuples)."""
    return TilingContract(tuple(fields["factor"]), tuple(fields["crop"]),
                          tuple(tuple(c) for c in fields["context"]), fields["exact"], fields["reason"],
                          tuple(fields["smallest"]), tuple(fields.get("fixed", ())),
                          tuple(tuple(p) for p in fields.get("scale", ())))


def verdict(model: torch.nn.Module, dims: int, in_channels: int, sizes: TilingContract) -> TilingContract:
    """The full contract from ``sizes``: context and verdict (module docstring), cached by the
    model's hash. A factor found too small by the shift check is doubled, up to 8 times, unless
    the check named the cause (an interpolation with ``align_corners=True``)."""
    key = contract_cache.cache_key("verdict", model_hash(model), dims, in_channels, asdict(sizes))
    cached = contract_cache.load(key)
    if cached is not None:
        return from_fields(cached)
    first, factor, crop = sizes.smallest[0], sizes.factor, sizes.crop
    given = sizes.context if any(a or b for a, b in sizes.context) else None
    contract = replace(_verdict(model, dims, in_channels, factor, crop, first, given, sizes.pairs),
                       smallest=sizes.smallest, scale=sizes.scale)
    for _ in range(3):  # a pooling the hooks did not see (a functional call) leaves the factor too small
        larger = tuple(2 * f for f in factor)
        if contract.exact or "shift-equivariant" not in contract.reason or "align_corners" in contract.reason \
                or _probe_voxels(first, larger, dims) > PROBE_VOXELS:
            break
        factor = larger
        contract = replace(_verdict(model, dims, in_channels, factor, crop, first, given, sizes.pairs),
                           smallest=sizes.smallest, scale=sizes.scale)
    contract_cache.store(key, asdict(contract))
    return contract


def _verdict(model: torch.nn.Module, dims: int, in_channels: int, factor: tuple[int, ...], crop: tuple[int, ...],
             first: int, given: tuple[tuple[int, int], ...] | None = None,
             pairs: tuple[Pair, ...] | None = None) -> TilingContract:
    """Context and verdict, probed one axis at a time: a window long along that axis and thin
    along the others (cheap in memory, whatever the model's reach); at scale ``pairs``."""
    pairs = pairs or ((1, 1),) * dims
    found = non_local_layers(model)
    if found:  # no NaN probe: it would fill any window
        return TilingContract(factor, crop, ((0, 0),) * dims, False, f"{', '.join(found)} mix the whole window")
    thin = [_valid_side(first, f, f) for f in factor]
    context = list(given or ())
    for axis in range(len(context), dims):
        length = _valid_side(first, factor[axis], max(4 * factor[axis], 32))
        while True:
            side = [*thin[:axis], length, *thin[axis + 1:]]
            reach = _reach(model, in_channels, side, factor, crop, axis, pairs[axis])
            if reach is not None or math.prod(side) * 2 > PROBE_VOXELS:
                break
            length = _valid_side(first, factor[axis], 2 * length)
        if reach is None:
            return TilingContract(factor, crop, ((0, 0),) * dims, False,
                                  f"one input voxel reaches every output along axis {axis} of a {side} window (a "
                                  "non-local operation, or a context larger than the probe: give context=)")
        context.append(reach)
    contract = TilingContract(factor, crop, tuple(context), True, scale=kept_scale(pairs))
    for axis in range(dims):
        shifted = _shift_error(model, in_channels, contract, thin, axis, first)
        if shifted:
            return replace(contract, exact=False, reason=shifted)
    return contract


def _probe_voxels(first: int, factor: tuple[int, ...], dims: int) -> int:
    """Voxels of the largest probe window for ``factor``."""
    thin = [_valid_side(first, f, f) for f in factor]
    return math.prod(thin) // thin[0] * _valid_side(first, factor[0], max(4 * factor[0], 32) * 2)


def _valid_side(first: int, factor: int, at_least: int) -> int:
    """The smallest ``first + k * factor`` of at least ``at_least`` (sizes the model accepts)."""
    return first + max(0, math.ceil((at_least - first) / factor)) * factor


def _reach(model: torch.nn.Module, in_channels: int, side: list[int], factor: tuple[int, ...],
           crop: tuple[int, ...], axis: int, pair: Pair = (1, 1)) -> tuple[int, int] | None:
    """The context along ``axis`` (low, high) in output voxels, the largest over every position
    modulo its factor; None if a NaN reaches the window's ends along it (a larger window is
    needed, or the model is non-local). An input voxel ``q`` sits at output ``floor(q * scale)``."""
    centre = [s // 2 // f * f for s, f in zip(side, factor, strict=True)]
    out_length = scaled(side[axis], pair) - 2 * crop[axis]
    low = high = 0
    for phase in range(factor[axis]):
        position = list(centre)
        position[axis] += phase
        bad = _touched(model, probe_input(model, (1, in_channels, *side), 1), position)
        where = torch.nonzero(bad.flatten(0, axis - 1) if axis else bad)
        if len(where) == 0:
            continue
        along = torch.nonzero(bad.movedim(axis, 0).flatten(1).any(dim=1))[:, 0]
        a, b = int(along.min()), int(along.max())
        if a == 0 or b == out_length - 1:
            return None
        q, c = position[axis] * pair[0] // pair[1], crop[axis]
        low, high = max(low, b - q), max(high, q - 2 * c - a)  # outputs above q reach down to it
    return low, high


def _touched(model: torch.nn.Module, x: torch.Tensor, position: list[int]) -> torch.Tensor:
    """The outputs that depend on input voxel ``position`` of ``x``: those a NaN there reaches,
    or for a model whose operators may drop NaN (``nan_probe = False``: onnxruntime's max
    pooling compares) those a large change there, up or down, changes."""
    voxel = (0, slice(None), *position)
    with torch.inference_mode():
        if getattr(model, "nan_probe", True):
            x[voxel] = float("nan")
            return torch.isnan(forward(model, x)).any(dim=1)[0]
        base, changed = forward(model, x), None
        for delta in (1e3, -1e3):
            y = x.clone()
            y[voxel] += delta
            moved = (forward(model, y) != base).any(dim=1)[0]
            changed = moved if changed is None else changed | moved
    return changed


def _shift_error(model: torch.nn.Module, in_channels: int, contract: TilingContract, thin: list[int], axis: int,
                 first: int) -> str:
    """Why a window's trusted outputs differ from those of a longer window that holds it at an
    aligned offset along ``axis`` ("" when they agree): a check that the model is
    shift-equivariant (interpolation with ``align_corners=True``, position encodings and the
    like are not). The other axes are the same in both windows."""
    f, c, (lo, hi) = contract.factor[axis], contract.crop[axis], contract.context[axis]
    pair = contract.pairs[axis]
    length = _valid_side(first, f, -(-(lo + hi + 2 * c) * pair[1] // pair[0]) + 2 * f)  # in input voxels
    side = [*thin[:axis], 2 * length + 2 * f - first % f, *thin[axis + 1:]]  # about twice as long, a valid size
    x = probe_input(model, (1, in_channels, *side), 2)
    window = [slice(None)] * len(side)
    window[axis] = slice(f, f + length)
    with torch.inference_mode():
        whole, part = forward(model, x), forward(model, x[(slice(None), slice(None), *window)])
    out, shift = scaled(length, pair), scaled(f, pair)
    trusted = slice(lo, out - 2 * c - hi)
    shifted = slice(shift + lo, shift + out - 2 * c - hi)
    a = whole.movedim(axis + 2, 0)[shifted]
    b = part.movedim(axis + 2, 0)[trusted]
    error = float((a - b).abs().max())
    if error <= SHIFT_TOLERANCE * (float(a.abs().max()) or 1.0):
        return ""
    named = [f"{name} ({type(m).__name__}, align_corners=True)" for name, m in model.named_modules()
             if getattr(m, "align_corners", False)]
    what = ", ".join(named) if named else "an operation that depends on the window's size or position"
    return f"its output is not shift-equivariant (differs by {error:.3g} between aligned windows): {what}"


def forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, which must be one tensor: a model with several outputs is told, in one line, to
    name the one to predict."""
    result = model(x)
    if isinstance(result, torch.Tensor):
        return result
    if isinstance(result, dict):
        kind = f"a dict of {_outputs(len(result))} ({', '.join(repr(k) for k in result)})"
    elif isinstance(result, list | tuple):
        kind = f"a {type(result).__name__} of {_outputs(len(result))}"
    else:
        kind = f"a {type(result).__name__}, not a tensor"
    raise DensePredError(f"this model returns {kind}; name the one to predict: output_tensor= in from_torch, "
                         "--output-tensor NAME|INDEX on the command line")


def _outputs(count: int) -> str:
    return "1 output" if count == 1 else f"{count} outputs"


def probe_input(model: torch.nn.Module, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A random probe input in the model's dtype, on its device."""
    parameter = next(model.parameters(), None)
    dtype, device = (torch.float32, "cpu") if parameter is None else (parameter.dtype, parameter.device)
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


def model_hash(model: torch.nn.Module) -> str:
    """What the contract depends on: the weights and everything else that shapes the graph - the
    module tree and each module's plain settings (constructor kwargs kept as attributes), the
    source of every class in it (a ``file.py`` model edited), and an exported program's code."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    digest.update(_structure(model).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # bf16 too
    return digest.hexdigest()


_PLAIN = (int, float, str, bool, type(None))
# inspect.getsource parses the class's file; CPython 3.11's parser fails when two threads parse at
# once ("SystemError: AST constructor recursion depth mismatch"), so densepred's calls take turns
_PARSING = threading.Lock()


def _structure(model: torch.nn.Module) -> str:
    parts, classes = [repr(model), str(getattr(model, "code", ""))], {}
    for name, module in model.named_modules():
        settings = {k: v for k, v in vars(module).items() if not k.startswith("_") and (
            isinstance(v, _PLAIN) or (isinstance(v, tuple | list) and all(isinstance(x, _PLAIN) for x in v)))}
        parts.append(f"{name}: {sorted(settings.items(), key=lambda kv: kv[0])}")
        classes.setdefault(type(module), None)
    for cls in classes:
        try:
            with _PARSING:
                parts.append(inspect.getsource(cls))
        except (OSError, TypeError):  # built in, or defined where no source is kept
            parts.append(f"{cls.__module__}.{cls.__qualname__}")
    return "\n".join(parts)


__all__ = ["NON_LOCAL", "PROBE_VOXELS", "TilingContract", "forward", "from_fields", "kept_scale", "model_hash",
           "non_local_layers", "probe_input", "verdict"]
