"""The **tiling contract** of a model written elsewhere (:mod:`.foreign`), found by probing it
once on the CPU:

* ``factor`` - the total downsampling per axis: the product of the strides of its strided
  convolutions and poolings. Window origins must be multiples of it.
* ``crop`` - voxels the output loses per side (0 for same padding; a valid-convolution U-Net
  loses some): one forward of a probe window.
* ``context`` - how far an output voxel's inputs reach on the low and high side: one NaN put
  in an input window spreads, in eval mode, exactly over the outputs that depend on it (for
  a model whose operators may drop a NaN, an ONNX graph, a large change up and down does).
  It is probed at every position modulo the factor (a U-Net's reach depends on it).
* ``verdict`` - exact tiling is possible unless something mixes the whole window: instance,
  group or layer norm over space, global pooling, attention (named), or a NaN that reaches
  every output.

Every field can be given instead of probed (``contract=TilingContract(...)`` or keyword
overrides; with the factor and the smallest input given, no size is probed). A model that
accepts one input size only (``fixed``) is tiled with windows of exactly that size. Probes are
cached on disk by a hash of the model's class and weights (:mod:`.contract_cache`).
"""

from __future__ import annotations

import hashlib
import inspect
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from ..errors import DensePredError
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
        return f"factor {list(self.factor)}, crop {list(self.crop)}, context (low/high) {context}, {sizes}; {verdict}"

    def valid(self, window: tuple[int, ...]) -> bool:
        """Whether the model accepts an input window of this size."""
        smallest = self.smallest or (1,) * len(window)
        fixed = self.fixed or (False,) * len(window)
        return all(w == m if x else w >= m and (w - m) % f == 0
                   for w, m, f, x in zip(window, smallest, self.factor, fixed, strict=True))


def fixed_sizes(model: torch.nn.Module, dims: int, in_channels: int, shape: tuple[int, ...],
                overrides: dict[str, Any]) -> TilingContract:
    """The contract of a model that accepts one input size only: its crop from one forward of
    that size; blended windows of it, or exact ones when the factor and context are given."""
    if len(shape) != dims or any(s < 1 for s in shape):
        raise DensePredError(f"fixed input shape {list(shape)} is invalid; expected {dims} positive sizes")
    crop = _crop_of(model, dims, in_channels, shape, "its fixed input shape")
    given = "factor" in overrides and "context" in overrides
    reason = "" if given else (f"its input size is fixed at {list(shape)}, so its factor and context cannot be "
                               "probed (give --factor and --context, factor= and context=, to tile it exactly)")
    contract = TilingContract(tuple(overrides.get("factor", (1,) * dims)), crop, ((0, 0),) * dims, given, reason,
                              tuple(shape), (True,) * dims)
    return replace(contract, **{k: v for k, v in overrides.items() if k in ("factor", "context")})


def _crop_of(model: torch.nn.Module, dims: int, in_channels: int, shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    """The voxels the output loses per side, from one forward of ``shape``."""
    found = _accepted(model, in_channels, dims, shape)
    if found is None:
        raise DensePredError(f"the model failed on {what} {list(shape)} with {in_channels} input channel(s)")
    out = found[0]
    if any(s - o < 0 or (s - o) % 2 for s, o in zip(shape, out, strict=True)):
        raise DensePredError(f"the model maps {what} {list(shape)} to {list(out)}; densepred tiles outputs as large "
                             "as the input or smaller by the same number of voxels on each side")
    return tuple((s - o) // 2 for s, o in zip(shape, out, strict=True))


def given_sizes(model: torch.nn.Module, dims: int, in_channels: int, overrides: dict[str, Any]) -> TilingContract:
    """The sizes contract from a given factor and smallest input (no probe of sizes): the crop
    from one forward of the smallest input unless it is given too."""
    factor, smallest = tuple(overrides["factor"]), tuple(overrides["smallest"])
    if len(factor) != dims or len(smallest) != dims or min(factor) < 1 or min(smallest) < 1:
        raise DensePredError(f"factor {list(factor)} and smallest input {list(smallest)} are invalid; expected "
                             f"{dims} positive integers each")
    crop = tuple(overrides["crop"]) if "crop" in overrides else _crop_of(model, dims, in_channels, smallest,
                                                                           "its smallest input")
    return TilingContract(factor, crop, tuple(overrides.get("context", ((0, 0),) * dims)), None, "", smallest)


def _strided(module: torch.nn.Module) -> tuple[int, ...] | None:
    """The stride of a downsampling convolution or pooling module, else None."""
    if isinstance(module, torch.nn.modules.conv._ConvTransposeNd):
        return None
    if isinstance(module, torch.nn.modules.conv._ConvNd):
        return tuple(module.stride)
    if isinstance(module, torch.nn.modules.pooling._MaxPoolNd | torch.nn.modules.pooling._AvgPoolNd):
        stride = module.stride if module.stride is not None else module.kernel_size
        return (stride,) if isinstance(stride, int) else tuple(stride)
    return None


def first_forward(model: torch.nn.Module, in_channels: int, dims: int) -> tuple[int, tuple[int, ...], int]:
    """A cube side the model tiles from (``side + k * factor`` are all accepted, each output
    ``2 * crop`` smaller), the factor (the product of the strides of the downsampling modules
    it called, per axis; a reused pooling module counts each time) and the crop.

    Sides from 1 up are tried; a side where pooling rounds down (its output loses extra
    voxels) or a decoder upsamples beyond the input is passed over.
    """
    best: tuple[int, tuple[int, ...], int] | None = None
    for side in range(1, 257):
        first = _accepted(model, in_channels, dims, side)
        if first is None:
            continue
        out, factor = first
        crop = side - out
        if crop < 0 or crop % 2:
            continue
        step = _next_size(model, in_channels, dims, side, out, max(factor))
        if step is None:
            continue
        factor = factor if step == max(factor) else (step,) * dims  # modules the hooks cannot see
        if best is None or crop < 2 * best[2]:
            best = (side, factor, crop // 2)
        if side >= best[0] + max(best[1]) - 1:
            return best
    if best is not None:
        return best
    raise DensePredError(f"the model accepted no {dims}D window from 1 to 256 voxels per side with {in_channels} "
                         "input channel(s) whose output is as large or smaller by a constant, so its downsampling "
                         "factor and smallest input could not be determined: check its dims and input channels "
                         "(--dims, --in-channels); give the factor and its smallest input (--factor and "
                         "--smallest, factor= and smallest=) if it needs sizes the probe did not try; an output at "
                         "another scale than its input (upsampling, half size) is not tiled by densepred")


def _next_size(model: torch.nn.Module, in_channels: int, dims: int, side: int, out: int, factor: int) -> int | None:
    """The smallest step (``factor`` times a power of two, up to 64x) to the next size the model
    accepts with an output larger by the same step; None if there is none."""
    step = factor
    while step <= 64 * factor and side + step <= 256:
        second = _accepted(model, in_channels, dims, side + step)
        if second is not None and second[0] - out == step:
            return step
        step *= 2
    return None


def _accepted(model: torch.nn.Module, in_channels: int, dims: int,
              side: int | tuple[int, ...]) -> tuple[Any, tuple[int, ...]] | None:
    """The output side and the downsampling factor of one forward of a cube (its output's
    sizes, and of any box given as ``side``), or None if it fails."""
    calls: list[tuple[int, ...]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append(_strided(m)))
             for m in model.modules() if _strided(m) is not None and max(_strided(m)) > 1]
    try:
        with torch.inference_mode():
            box = side if isinstance(side, tuple) else (side,) * dims
            out = model(_rand(model, (1, in_channels, *box), 0))
    except Exception:  # too small, sizes that do not fit together, an exported program's guard
        return None
    finally:
        for hook in hooks:
            hook.remove()
    factor = [1] * dims
    for stride in calls:
        per_axis = stride * dims if len(stride) == 1 else stride[-dims:]
        factor = [f * t for f, t in zip(factor, per_axis, strict=True)]
    if isinstance(side, tuple):
        return tuple(out.shape[2:]), tuple(factor)
    sides = set(out.shape[2:])
    return (sides.pop(), tuple(factor)) if len(sides) == 1 else None


def non_local_layers(model: torch.nn.Module) -> list[str]:
    """Names (and types) of layers that mix a whole window."""
    return [f"{name} ({type(m).__name__})" for name, m in model.named_modules() if isinstance(m, NON_LOCAL)
            and not _identity_norm(m)]


def _identity_norm(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.LayerNorm) and len(module.normalized_shape) == 1  # over channels only


def sizes(model: torch.nn.Module, dims: int, in_channels: int,
          factor: tuple[int, ...] | None = None) -> TilingContract:
    """The model's factor, crop and accepted sizes; its context and verdict are not probed yet
    (``exact`` is None). Cached on disk (:mod:`.contract_cache`)."""
    key = contract_cache.cache_key("sizes", _model_hash(model), dims, in_channels, factor)
    cached = contract_cache.load(key)
    if cached is not None:
        return _contract(cached)
    first, found_factor, crop_side = first_forward(model, in_channels, dims)
    contract = TilingContract(tuple(factor) if factor is not None else found_factor, (crop_side,) * dims,
                              ((0, 0),) * dims, None, "", (first,) * dims)
    contract_cache.store(key, asdict(contract))
    return contract


def _contract(fields: dict[str, Any]) -> TilingContract:
    """A contract from its cached JSON fields (lists back to tuples)."""
    return TilingContract(tuple(fields["factor"]), tuple(fields["crop"]),
                          tuple(tuple(c) for c in fields["context"]), fields["exact"], fields["reason"],
                          tuple(fields["smallest"]), tuple(fields.get("fixed", ())))


def verdict(model: torch.nn.Module, dims: int, in_channels: int, sizes: TilingContract) -> TilingContract:
    """The full contract from ``sizes``: context and verdict (module docstring), cached by the
    model's hash. A factor found too small by the shift check is doubled, up to 8 times."""
    key = contract_cache.cache_key("verdict", _model_hash(model), dims, in_channels, asdict(sizes))
    cached = contract_cache.load(key)
    if cached is not None:
        return _contract(cached)
    first, factor, crop = sizes.smallest[0], sizes.factor, sizes.crop
    given = sizes.context if any(a or b for a, b in sizes.context) else None
    contract = replace(_verdict(model, dims, in_channels, factor, crop, first, given), smallest=sizes.smallest)
    for _ in range(3):  # a pooling the hooks did not see (a functional call) leaves the factor too small
        larger = tuple(2 * f for f in factor)
        if contract.exact or "shift-equivariant" not in contract.reason or _probe_voxels(
                first, larger, dims) > PROBE_VOXELS:
            break
        factor = larger
        contract = replace(_verdict(model, dims, in_channels, factor, crop, first, given), smallest=sizes.smallest)
    contract_cache.store(key, asdict(contract))
    return contract


def _verdict(model: torch.nn.Module, dims: int, in_channels: int, factor: tuple[int, ...], crop: tuple[int, ...],
             first: int, given: tuple[tuple[int, int], ...] | None = None) -> TilingContract:
    """Context and verdict, probed one axis at a time: a window long along that axis and thin
    along the others (cheap in memory, whatever the model's reach)."""
    found = non_local_layers(model)
    if found:  # no NaN probe: it would fill any window
        return TilingContract(factor, crop, ((0, 0),) * dims, False, f"{', '.join(found)} mix the whole window")
    thin = [_valid_side(first, f, f) for f in factor]
    context = list(given or ())
    for axis in range(len(context), dims):
        length = _valid_side(first, factor[axis], max(4 * factor[axis], 32))
        while True:
            side = [*thin[:axis], length, *thin[axis + 1:]]
            reach = _reach(model, in_channels, side, factor, crop, axis)
            if reach is not None or math.prod(side) * 2 > PROBE_VOXELS:
                break
            length = _valid_side(first, factor[axis], 2 * length)
        if reach is None:
            return TilingContract(factor, crop, ((0, 0),) * dims, False,
                                  f"one input voxel reaches every output along axis {axis} of a {side} window (a "
                                  "non-local operation, or a context larger than the probe: give context=)")
        context.append(reach)
    contract = TilingContract(factor, crop, tuple(context), True)
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
           crop: tuple[int, ...], axis: int) -> tuple[int, int] | None:
    """The context along ``axis`` (low, high), the largest over every position modulo its
    factor; None if a NaN reaches the window's ends along it (a larger window is needed, or
    the model is non-local)."""
    centre = [s // 2 // f * f for s, f in zip(side, factor, strict=True)]
    out_length = side[axis] - 2 * crop[axis]
    low = high = 0
    for phase in range(factor[axis]):
        position = list(centre)
        position[axis] += phase
        bad = _touched(model, _rand(model, (1, in_channels, *side), 1), position)
        where = torch.nonzero(bad.flatten(0, axis - 1) if axis else bad)
        if len(where) == 0:
            continue
        along = torch.nonzero(bad.movedim(axis, 0).flatten(1).any(dim=1))[:, 0]
        a, b = int(along.min()), int(along.max())
        if a == 0 or b == out_length - 1:
            return None
        q, c = position[axis], crop[axis]
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
            return torch.isnan(model(x)).any(dim=1)[0]
        base, changed = model(x), None
        for delta in (1e3, -1e3):
            y = x.clone()
            y[voxel] += delta
            moved = (model(y) != base).any(dim=1)[0]
            changed = moved if changed is None else changed | moved
    return changed


def _shift_error(model: torch.nn.Module, in_channels: int, contract: TilingContract, thin: list[int], axis: int,
                 first: int) -> str:
    """Why a window's trusted outputs differ from those of a longer window that holds it at an
    aligned offset along ``axis`` ("" when they agree): a check that the model is
    shift-equivariant (interpolation with ``align_corners=True``, position encodings and the
    like are not). The other axes are the same in both windows."""
    f, c, (lo, hi) = contract.factor[axis], contract.crop[axis], contract.context[axis]
    length = _valid_side(first, f, lo + hi + 2 * c + 2 * f)
    side = [*thin[:axis], 2 * length + 2 * f - first % f, *thin[axis + 1:]]  # about twice as long, a valid size
    x = _rand(model, (1, in_channels, *side), 2)
    window = [slice(None)] * len(side)
    window[axis] = slice(f, f + length)
    with torch.inference_mode():
        whole, part = model(x), model(x[(slice(None), slice(None), *window)])
    trusted = slice(lo, length - 2 * c - hi)
    shifted = slice(f + lo, f + length - 2 * c - hi)
    a = whole.movedim(axis + 2, 0)[shifted]
    b = part.movedim(axis + 2, 0)[trusted]
    error = float((a - b).abs().max())
    if error <= SHIFT_TOLERANCE * (float(a.abs().max()) or 1.0):
        return ""
    named = [f"{name} ({type(m).__name__}, align_corners=True)" for name, m in model.named_modules()
             if getattr(m, "align_corners", False)]
    what = ", ".join(named) if named else "an operation that depends on the window's size or position"
    return f"its output is not shift-equivariant (differs by {error:.3g} between aligned windows): {what}"


def _rand(model: torch.nn.Module, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A random probe input in the model's dtype, on its device."""
    parameter = next(model.parameters(), None)
    dtype, device = (torch.float32, "cpu") if parameter is None else (parameter.dtype, parameter.device)
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


def _model_hash(model: torch.nn.Module) -> str:
    """What the contract depends on: the weights and everything else that shapes the graph - the
    module tree and each module's plain settings (constructor kwargs kept as attributes), the
    source of every class in it (a ``file.py`` model edited), and an exported program's code."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    digest.update(_structure(model).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


_PLAIN = (int, float, str, bool, type(None))


def _structure(model: torch.nn.Module) -> str:
    parts, classes = [repr(model), str(getattr(model, "code", ""))], {}
    for name, module in model.named_modules():
        settings = {k: v for k, v in vars(module).items() if not k.startswith("_") and (
            isinstance(v, _PLAIN) or (isinstance(v, tuple | list) and all(isinstance(x, _PLAIN) for x in v)))}
        parts.append(f"{name}: {sorted(settings.items(), key=lambda kv: kv[0])}")
        classes.setdefault(type(module), None)
    for cls in classes:
        try:
            parts.append(inspect.getsource(cls))
        except (OSError, TypeError):  # built in, or defined where no source is kept
            parts.append(f"{cls.__module__}.{cls.__qualname__}")
    return "\n".join(parts)


__all__ = ["NON_LOCAL", "PROBE_VOXELS", "TilingContract", "first_forward", "fixed_sizes", "given_sizes",
           "non_local_layers", "sizes", "verdict"]
