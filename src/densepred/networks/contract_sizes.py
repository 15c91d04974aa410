"""The sizes of a model's tiling contract (:mod:`.contract`): its downsampling factor, crop,
output scale and smallest input, found from forwards of cubes on the CPU, or given (the factor
and smallest input; a fixed input shape).

Cubes from 1 voxel per side up are run until one is accepted whose output, and that of a
larger cube, grow by the scale (1 unless given or confirmed by a third size) and lose the same
voxels per side; the strides of the downsampling modules the forward called give the factor.
Results are cached on disk by the model's hash (:mod:`.contract_cache`).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from fractions import Fraction
from typing import Any

import torch

from ..errors import DensePredError
from ..geometry.scale import MAX_TERM, Pair, aligned_factor, ratio
from ..geometry.scale import text as scale_text
from . import contract_cache
from .contract import TilingContract, forward, from_fields, kept_scale, model_hash, probe_input, verdict


def fixed_sizes(model: torch.nn.Module, dims: int, in_channels: int, shape: tuple[int, ...],
                overrides: dict[str, Any]) -> TilingContract:
    """The contract of a model that accepts one input size only: its crop from one forward of
    that size; blended windows of it, or exact ones when the factor and context are given."""
    if len(shape) != dims or any(s < 1 for s in shape):
        raise DensePredError(f"fixed input shape {list(shape)} is invalid; expected {dims} positive sizes")
    what = "its fixed input shape"
    out = _output_of(model, dims, in_channels, shape, what)
    scale = overrides.get("scale") or _fixed_scale(shape, out)
    factor = tuple(aligned_factor(f, p) for f, p in zip(overrides.get("factor", (1,) * dims), scale, strict=True))
    crop = _crop_of(shape, out, what, scale)
    given = "factor" in overrides and "context" in overrides
    reason = "" if given else (f"its input size is fixed at {list(shape)}, so its factor and context cannot be "
                               "probed (give --factor and --context, factor= and context=, to tile it exactly)")
    contract = TilingContract(factor, crop, ((0, 0),) * dims, given, reason,
                              tuple(shape), (True,) * dims, kept_scale(scale))
    return replace(contract, **{k: v for k, v in overrides.items() if k == "context"})


def _fixed_scale(shape: tuple[int, ...], out: tuple[int, ...]) -> tuple[Pair, ...]:
    """A fixed-shape model's scale, not given: 1 where its output ``out`` is as large as its
    input or smaller by an even number of voxels, else its output's size over its input's."""
    pairs = []
    for s, o in zip(shape, out, strict=True):
        r = Fraction(1) if s >= o and (s - o) % 2 == 0 else Fraction(o, s)
        pairs.append((r.numerator, r.denominator))
    return tuple(pairs)


def _output_of(model: torch.nn.Module, dims: int, in_channels: int, shape: tuple[int, ...],
               what: str) -> tuple[int, ...]:
    """The output's spatial sizes of one forward of ``shape``."""
    found = _accepted(model, in_channels, dims, shape)
    if found is None:
        raise DensePredError(f"the model failed on {what} {list(shape)} with {in_channels} input channel(s)")
    return tuple(found[0])


def _crop_of(shape: tuple[int, ...], out: tuple[int, ...], what: str, scale: tuple[Pair, ...] = ()) -> tuple[int, ...]:
    """The output voxels lost per side when input ``shape`` gives output ``out`` (at ``scale``)."""
    expected = tuple(s * ratio(p) for s, p in zip(shape, scale or ((1, 1),) * len(shape), strict=True))
    if any(e - o < 0 or (e - o) % 2 for e, o in zip(expected, out, strict=True)):
        at = f" at scale {scale_text(scale)}" if kept_scale(scale) else ""
        raise DensePredError(f"the model maps {what} {list(shape)} to {list(out)}; densepred tiles outputs as large "
                             f"as the input{at} or smaller by the same number of voxels on each side (give --scale, "
                             "scale=, for an output at another scale: 0.5, 4)")
    return tuple(int(e - o) // 2 for e, o in zip(expected, out, strict=True))


def given_sizes(model: torch.nn.Module, dims: int, in_channels: int, overrides: dict[str, Any]) -> TilingContract:
    """The sizes contract from a given factor and smallest input (no probe of sizes): the crop
    from one forward of the smallest input unless it is given too, and the scale checked by a
    second forward one factor larger."""
    factor, smallest = tuple(overrides["factor"]), tuple(overrides["smallest"])
    if len(factor) != dims or len(smallest) != dims or min(factor) < 1 or min(smallest) < 1:
        raise DensePredError(f"factor {list(factor)} and smallest input {list(smallest)} are invalid; expected "
                             f"{dims} positive integers each")
    scale = tuple(overrides.get("scale") or ((1, 1),) * dims)
    factor = tuple(aligned_factor(f, p) for f, p in zip(factor, scale, strict=True))
    if "crop" in overrides:
        crop = tuple(overrides["crop"])
    else:
        out = _output_of(model, dims, in_channels, smallest, "its smallest input")
        crop = _crop_of(smallest, out, "its smallest input", scale)
        _check_growth(model, dims, in_channels, (smallest, out), factor, scale)
    return TilingContract(factor, crop, tuple(overrides.get("context", ((0, 0),) * dims)), None, "", smallest,
                          scale=kept_scale(scale))


def _check_growth(model: torch.nn.Module, dims: int, in_channels: int,
                  smallest: tuple[tuple[int, ...], tuple[int, ...]], factor: tuple[int, ...],
                  scale: tuple[Pair, ...]) -> None:
    """That the output grows by the factor times the scale when the input grows by the factor
    (``smallest``: the smallest input and its output)."""
    (shape, out) = smallest
    larger = tuple(m + f for m, f in zip(shape, factor, strict=True))
    second = _accepted(model, in_channels, dims, larger)
    if second is None:
        raise DensePredError(f"the model failed on the input {list(larger)} (its smallest input plus its factor): "
                             "check --factor and --smallest (factor= and smallest=)")
    growth = [b - a for a, b in zip(out, second[0], strict=True)]
    if any(g != f * ratio(p) for g, f, p in zip(growth, factor, scale, strict=True)):
        found = ",".join(str(Fraction(g, f)) for g, f in zip(growth, factor, strict=True))
        raise DensePredError(f"the model's output grows by {growth} voxels when its input grows by its factor "
                             f"{list(factor)}, so its output scale is {found}, not {scale_text(scale)}: give "
                             f"--scale {found} (scale=), or check --factor")


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


MAX_MISSES = 4  # a U-Net's first accepted side has its next size; a model that does not tile has none


def first_forward(model: torch.nn.Module, in_channels: int, dims: int,
                  scale: Fraction | None = None) -> tuple[int, tuple[int, ...], int, Fraction]:
    """A cube side the model tiles from (``side + k * factor`` are all accepted, each output
    ``side * scale - 2 * crop``), the factor (the product of the strides of the downsampling
    modules it called, per axis, a reused pooling module counted each time; a multiple of the
    scale's denominator), the crop and the scale (the growth of the output over that of the
    input between two sizes, unless given).

    Sides from 1 up are tried; a side where pooling rounds down (its output loses extra
    voxels) or a decoder upsamples beyond the input is passed over.
    """
    best: tuple[int, tuple[int, ...], int, Fraction] | None = None
    misses = 0  # accepted sides without a next size at the scale: each costs forwards up to 256 a side
    for side in range(1, 257):
        first = _accepted(model, in_channels, dims, side)
        if first is None:
            continue
        out, factor = first
        found = _next_size(model, in_channels, dims, side, out, max(factor), scale)
        if found is None:
            misses += 1
            if best is None and misses == MAX_MISSES:  # a wrong scale given, or an output that does not grow
                break
            continue
        step, r = found
        crop = side * r - out
        if crop < 0 or crop.denominator != 1 or crop % 2 or (best is not None and r != best[3]):
            continue
        factor = factor if step == max(factor) else (step,) * dims  # modules the hooks cannot see
        factor = tuple(aligned_factor(f, (r.numerator, r.denominator)) for f in factor)
        if best is None or crop < 2 * best[2]:
            best = (side, factor, int(crop) // 2, r)
        if side >= best[0] + max(best[1]) - 1:
            return best
    if best is not None:
        return best
    at = "as large as the input (or at a scale two sizes confirm)" if scale is None else f"{scale} times the input"
    hint = ("its output scale (--scale, scale=: output voxels per input voxel, 0.5 or 4) if the probe cannot find "
            "it" if scale is None else f"check the scale {scale} given (--scale, scale=, or a package's output axes)")
    raise DensePredError(f"the model accepted no {dims}D window from 1 to {side} voxels per side with {in_channels} "
                         f"input channel(s) whose output is {at} less a constant, so its downsampling "
                         "factor and smallest input could not be determined: check its dims and input channels "
                         "(--dims, --in-channels); give the factor and its smallest input (--factor and "
                         f"--smallest, factor= and smallest=) if it needs sizes the probe did not try; {hint}")


def _next_size(model: torch.nn.Module, in_channels: int, dims: int, side: int, out: int, factor: int,
               scale: Fraction | None = None) -> tuple[int, Fraction] | None:
    """The smallest step (``factor`` times a power of two, up to 64x) to the next size the model
    accepts with an output larger by the step times the scale (``scale``, or 1, or a scale of
    small terms that a third size confirms), and that scale; None if there is none."""
    step = factor
    while step <= 64 * factor and side + step <= 256:
        second = _accepted(model, in_channels, dims, side + step)
        r = Fraction(second[0] - out, step) if second is not None and second[0] > out else None
        if r is not None and (r == scale if scale is not None else r == 1 or _linear(
                model, in_channels, dims, side + 2 * step, out + 2 * step * r)):
            return step, r
        step *= 2
    return None


def _linear(model: torch.nn.Module, in_channels: int, dims: int, side: int, expected: Fraction) -> bool:
    """Whether a third size confirms a scale: its output is ``expected``."""
    if expected.denominator != 1 or expected.numerator > MAX_TERM * 256:
        return False
    third = _accepted(model, in_channels, dims, side)
    return third is not None and third[0] == expected


def finest_verdict(model: torch.nn.Module, dims: int, in_channels: int, probed: TilingContract) -> TilingContract:
    """The full contract (:func:`~.contract.verdict`) from the finest factor that tiles exactly:
    the step of the sizes the model accepts (:func:`size_step`) where that is finer than the
    probed factor and the verdict at it (context, shift test, doubling) finds the model exact;
    else the probed factor's. Finer factors put windows on a finer grid: smaller exact windows,
    less context recomputed per window. Cached on disk like the verdict."""
    key = contract_cache.cache_key("finest", model_hash(model), dims, in_channels, asdict(probed))
    cached = contract_cache.load(key)
    if cached is not None:
        return from_fields(cached)
    step = size_step(model, in_channels, dims, probed)
    finer = None if step is None else verdict(model, dims, in_channels, replace(probed, factor=(step,) * dims))
    if finer is None or not finer.exact or max(finer.factor) >= max(probed.factor):
        finer = verdict(model, dims, in_channels, probed)
    contract_cache.store(key, asdict(finer))
    return finer


def size_step(model: torch.nn.Module, in_channels: int, dims: int, contract: TilingContract) -> int | None:
    """The step of the grid of sizes the model accepts where it is finer than ``contract``'s
    factor (the same on every axis): the smallest divisor ``d > 1`` of the factor such that the
    smallest input plus ``d`` is on the grid (accepted, with an output larger by ``d`` times the
    scale). None where the grid is not finer, or where the next size up is on it too (then the
    sizes say nothing of the model's alignment). A strided branch beside the main path (a
    residual unit's strided shortcut) is counted by the probe as if in series, so such a
    model's factor comes out larger than its strides; a finer factor given (``--factor``) is
    then checked by the verdict's shift test like any other."""
    factor = set(contract.factor)
    if len(factor) != 1 or not contract.smallest or len(set(contract.smallest)) != 1 or any(contract.fixed):
        return None
    (f,), side, r = factor, contract.smallest[0], ratio(contract.pairs[0])
    if f == 1:
        return None

    def on_grid(d: int) -> bool:  # the output of side + d: the smallest input's, larger by d times the scale
        second = _accepted(model, in_channels, dims, side + d)
        return second is not None and second[0] == (side + d) * r - 2 * contract.crop[0]

    if on_grid(1):
        return None
    return next((d for d in range(2, f) if f % d == 0 and on_grid(d)), None)


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
            out = forward(model, probe_input(model, (1, in_channels, *box), 0))
    except DensePredError:  # no size cures it (an output the model does not have)
        raise
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


def sizes(model: torch.nn.Module, dims: int, in_channels: int, factor: tuple[int, ...] | None = None,
          scale: tuple[Pair, ...] | None = None) -> TilingContract:
    """The model's factor, crop, scale and accepted sizes; its context and verdict are not probed
    yet (``exact`` is None). Cached on disk (:mod:`.contract_cache`). A given ``scale`` must be
    the same on every axis."""
    given = None if scale is None else {ratio(p) for p in scale}
    if given is not None and len(given) > 1:
        raise DensePredError(f"scale {[str(ratio(p)) for p in scale]} differs per axis, which the probe of sizes "
                             "cannot follow; give --factor and --smallest too (factor= and smallest=)")
    key = contract_cache.cache_key("sizes", model_hash(model), dims, in_channels, factor,
                                   *(() if scale is None else (scale,)))
    cached = contract_cache.load(key)
    if cached is not None:
        return from_fields(cached)
    first, found_factor, crop_side, r = first_forward(model, in_channels, dims, None if given is None else given.pop())
    pairs = ((r.numerator, r.denominator),) * dims
    contract = TilingContract(tuple(aligned_factor(f, p) for f, p in zip(factor, pairs, strict=True))
                              if factor is not None else found_factor, (crop_side,) * dims,
                              ((0, 0),) * dims, None, "", (first,) * dims, scale=kept_scale(pairs))
    contract_cache.store(key, asdict(contract))
    return contract


__all__ = ["finest_verdict", "first_forward", "fixed_sizes", "given_sizes", "size_step", "sizes"]
