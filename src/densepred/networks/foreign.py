"""Models written elsewhere (MONAI, segmentation_models_pytorch, funlib, plain PyTorch U-Nets).

:func:`from_torch` wraps a ``torch.nn.Module`` that maps ``(N, C, *spatial)`` to
``(N, K, *spatial')`` as a :class:`ForeignNet`, with the tiling contract of :mod:`.contract`
(its downsampling factor, crop, context and whether exact tiling is possible), probed once or
given. A 2D model over a stack of 2D images is a :class:`StackNet`.
"""

from __future__ import annotations

import logging
import numbers
import threading
from dataclasses import replace
from typing import Any

import torch

from ..errors import DensePredError
from ..geometry.scale import aligned_factor, scale_pairs
from .caller_state import evaluating
from .contract import TilingContract, kept_scale, verdict
from .contract_sizes import finest_verdict, fixed_sizes, given_sizes, sizes

log = logging.getLogger("densepred")

OUTPUTS = ("softmax", "sigmoid", "identity")
_PROBING = threading.Lock()  # one contract probe at a time (a lock per net would not pickle with it)


class ForeignNet(torch.nn.Module):
    """A model written elsewhere, with what densepred needs to tile it.

    ``sizes`` (factor, crop, accepted sizes) is found when the net is made; the context and
    the verdict (``contract``) are probed on first use, so blending, which needs neither,
    never pays for them.
    """

    def __init__(self, model: torch.nn.Module, dims: int, in_channels: int, output: str, sizes: TilingContract,
                 window: tuple[int, ...] | None, overrides: dict[str, Any] | None = None):
        super().__init__()
        self.model, self.dims, self.in_channels, self.output = model, dims, in_channels, output
        self.sizes, self.window = sizes, window
        self._overrides = overrides or {}
        self._contract: TilingContract | None = sizes if sizes.exact is not None else None

    @property
    def contract(self) -> TilingContract:
        """The full tiling contract (probed now if it was not yet; once, when several threads
        ask at once)."""
        if self._contract is None:
            with _PROBING:
                if self._contract is None:
                    judge = verdict if "factor" in self._overrides else finest_verdict  # a factor given is kept
                    with evaluating(self.model):
                        probed = judge(self.model, self.dims, self.in_channels, self.sizes)
                    self._contract = replace(probed, **self._overrides)
                    log.info("tiling contract: %s", self._contract.describe())
        return self._contract

    independent_axes: tuple[int, ...] = ()  # axes along which windows need no overlap (a stack's z)
    preprocessing: tuple[Any, ...] = ()  # a bioimage.io model's input steps (networks.processing.Step)
    padding: tuple[str, float] = ("constant", 0.0)  # how a window beyond the image is filled (NumPy's pad mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        if self.output == "softmax":
            return torch.softmax(logits, dim=1)
        return torch.sigmoid(logits) if self.output == "sigmoid" else logits


class SliceWise(torch.nn.Module):
    """A 2D model applied to every z slice of ``(N, C, Z, Y, X)``, the slices batched."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, z = x.shape[:3]
        y = self.model(x.transpose(1, 2).reshape(n * z, c, *x.shape[3:]))
        return y.reshape(n, z, *y.shape[1:]).transpose(1, 2)


class StackNet(ForeignNet):
    """A 2D model over a stack of 2D images: a 3D net whose z slices are independent.

    Its contract is the 2D one with z added as factor 1, crop 0, context 0, so a window of
    several slices is exact and windows need no overlap along z.
    """

    independent_axes = (0,)

    def __init__(self, flat: ForeignNet):
        super().__init__(SliceWise(flat.model), 3, flat.in_channels, flat.output, over_stack(flat.sizes), None)
        self.flat, self.preprocessing, self.padding = flat, flat.preprocessing, flat.padding

    @property
    def contract(self) -> TilingContract:
        return over_stack(self.flat.contract)


def over_stack(c: TilingContract) -> TilingContract:
    """A 2D contract with a leading z axis of independent slices."""
    return TilingContract((1, *c.factor), (0, *c.crop), ((0, 0), *c.context), c.exact, c.reason,
                          (1, *c.smallest) if c.smallest else (), (False, *c.fixed) if c.fixed else (),
                          ((1, 1), *c.scale) if c.scale else ())


def from_torch(model: torch.nn.Module, *, dims: int, in_channels: int, output: str = "softmax",
               window: tuple[int, ...] | int | None = None, contract: TilingContract | None = None,
               fixed: tuple[int, ...] | None = None, output_tensor: int | str | None = None,
               **overrides: Any) -> ForeignNet:
    """Wrap ``model`` for :func:`densepred.predict_dense` (``mode="exact"``, ``"blend"`` or ``"auto"``).

    Args:
        model: maps ``(N, in_channels, *spatial)`` to ``(N, K, *spatial')``. It is probed and
            predicted in eval mode, whatever mode it is in; its training flags are left as they are
            (a model still being trained can be predicted between steps).
        dims: 2 or 3 spatial dimensions.
        output: ``"softmax"`` (classes), ``"sigmoid"`` (affinities, multi-label) or ``"identity"``.
        window: the input window to tile with (default: the smallest exact window, at least 64).
        contract: the tiling contract, instead of probing; or override fields by keyword
            (``factor=(1, 16, 16)``, ``context=((40, 40),) * 3``, ...; ``scale=0.5`` or ``"1/2"``
            or ``4``: output voxels per input voxel, of a model whose output is at another scale,
            which the probe otherwise finds from two window sizes).
        fixed: the only input size the model accepts (a model exported with a fixed shape):
            windows are exactly that size, blended unless ``factor`` and ``context`` are given
            (then exact: the model is trusted to be shift-equivariant by that factor).
        output_tensor: of a model that returns several outputs (a tuple, list or dict), the
            index or key of the one to predict.
    """
    _check_arguments(model, dims, in_channels, output)
    dims, in_channels = int(dims), int(in_channels)  # NumPy integers as Python ones
    if output_tensor is not None:
        from .model_files import OneOutput

        model = OneOutput(model, output_tensor)
    window = None if window is None else per_axis_ints(window, dims, "window")
    overrides = _checked_fields(overrides, dims)
    with evaluating(model):  # probed as it predicts; the caller's training flags kept
        contract, window = _probed(model, dims, in_channels, contract, fixed, overrides, window)
    return ForeignNet(model, dims, in_channels, output, contract, window, overrides)


def _probed(model: Any, dims: int, in_channels: int, contract: TilingContract | None, fixed: Any,
            overrides: dict[str, Any], window: tuple[int, ...] | None) -> tuple[TilingContract, tuple[int, ...] | None]:
    """The contract given (with ``overrides``), or the sizes probed (the context and verdict are
    probed on first use), and the window (a fixed size's)."""
    if fixed is None and contract is None and callable(getattr(model, "fixed_shape", None)):
        fixed = model.fixed_shape()  # an ONNX graph with a static input shape
    if contract is None and fixed is not None:
        contract = fixed_sizes(model, dims, in_channels, tuple(fixed), overrides)
        window = tuple(fixed)
    elif contract is None and "factor" in overrides and "smallest" in overrides:
        contract = given_sizes(model, dims, in_channels, overrides)
    elif contract is None:
        factor = overrides.get("factor")
        contract = replace(sizes(model, dims, in_channels, None if factor is None else tuple(factor),
                                 overrides.get("scale") or None), **{
            k: v for k, v in overrides.items() if k in ("factor", "crop", "smallest")})
        if "context" in overrides:  # the context given: only the verdict's scan and checks remain
            contract = replace(contract, context=overrides["context"])
    else:
        contract = replace(contract, **overrides)
    return contract, window


def _check_arguments(model: Any, dims: Any, in_channels: Any, output: Any) -> None:
    """from_torch's arguments, each refused in one line when wrong in type or range."""
    if not isinstance(model, torch.nn.Module) and not callable(model):
        raise DensePredError(f"model must be a torch.nn.Module (or a callable mapping a tensor to a tensor), got "
                             f"{type(model).__name__}")
    if not isinstance(dims, numbers.Integral) or isinstance(dims, bool) or dims not in (2, 3):
        raise DensePredError(f"dims = {dims!r} is invalid; expected 2 or 3 spatial dimensions")
    if not isinstance(in_channels, numbers.Integral) or isinstance(in_channels, bool) or in_channels < 1:
        raise DensePredError(f"in_channels = {in_channels!r} is invalid; expected a positive integer")
    if output not in OUTPUTS:
        raise DensePredError(f"output {output!r} is invalid; expected one of {', '.join(OUTPUTS)}")


def _checked_fields(overrides: dict[str, Any], dims: int) -> dict[str, Any]:
    """Contract fields given by keyword, checked and per axis (a scale as ``(up, down)`` pairs,
    the factor a multiple of its denominators)."""
    overrides = dict(overrides)
    unknown = set(overrides) - set(TilingContract.__dataclass_fields__)
    if unknown:
        raise DensePredError(f"unknown contract fields {sorted(unknown)}; valid: factor, crop, context, exact, "
                             "reason, smallest, scale")
    for name, least in (("factor", 1), ("smallest", 1), ("crop", 0)):
        if name in overrides:
            overrides[name] = per_axis_ints(overrides[name], dims, name, least)
    if "scale" in overrides:
        overrides["scale"] = kept_scale(scale_pairs(overrides["scale"], dims))
        if overrides["scale"] and isinstance(overrides.get("factor"), tuple | list):  # whole output shifts
            overrides["factor"] = tuple(aligned_factor(int(f), p) for f, p in zip(overrides["factor"],
                                                                                   overrides["scale"], strict=False))
    return overrides


def per_axis_ints(value: Any, dims: int, name: str, least: int = 1) -> tuple[int, ...]:
    """``value`` (one integer for every axis, or one per axis) as ``dims`` integers >= ``least``."""
    values = (value,) * dims if isinstance(value, numbers.Integral) else value
    if (not isinstance(values, list | tuple) or len(values) != dims or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= least for v in values)):
        kind = "positive" if least else "non-negative"
        raise DensePredError(f"{name} {value!r} is invalid; expected {dims} {kind} integers (or one for every axis)")
    return tuple(int(v) for v in values)


def per_axis_fields(fields: dict[str, Any] | None, dims: int) -> dict[str, Any]:
    """Contract fields with one value for every axis expanded to ``dims`` (factor, smallest,
    crop: integers; context: (low, high) pairs; a scale is expanded by :func:`from_torch`)."""
    expanded = {}
    for name, given in (fields or {}).items():
        if name == "scale":
            expanded[name] = given
            continue
        values = tuple(given) if isinstance(given, list | tuple) else (given,)
        if len(values) == 1:
            values = values * dims
        if len(values) != dims:
            raise DensePredError(f"{name} {list(values)} has {len(values)} values for a {dims}D model; give one, or "
                                 f"one per axis")
        expanded[name] = values
    return expanded


__all__ = ["OUTPUTS", "ForeignNet", "SliceWise", "StackNet", "TilingContract", "from_torch", "over_stack",
           "per_axis_fields", "per_axis_ints"]
