"""``densepred info --model``: what densepred finds out about a model written elsewhere before
it predicts with it: its tiling contract (probed, or as given), whether it tiles exactly and
why not, the smallest exact window, its memory per input voxel, and whether a window size is
one it accepts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import DensePredError
from ...networks.devices import dtype_of
from ...networks.foreign import TilingContract
from ...progress import shape_text
from ..compute.model_run import ModelRun
from ..compute.preprocess import Prepared
from ..planning.model_window import DEFAULT_WINDOW, model_memory, smallest_exact
from .model_plan import model_net, shaped_image


@dataclass(frozen=True)
class ModelInfo:
    """A model's facts as densepred tiles it."""

    name: str
    dims: int
    in_channels: int
    out_channels: int
    contract: TilingContract
    window: tuple[int, ...]  # the smallest exact window, or the window blending keeps
    bytes_per_voxel: float  # one forward's, measured
    window_bytes: int  # the estimate for ``window`` (buffers of the windows in flight included)
    device: str
    asked: tuple[int, ...] | None = None  # a window size to check

    def report(self) -> str:
        c = self.contract
        lines = [f"model '{self.name}': {self.dims}D, {self.in_channels} channel(s) in, {self.out_channels} out",
                 f"contract        {c.describe()}"]
        if c.exact:
            lines.append(f"smallest exact  window {shape_text(self.window)} (a larger one recomputes less context)")
        else:
            lines.append(f"blended         predict blends windows of {shape_text(self.window)} (--tile sets another)")
        lines.append(f"memory          {self.bytes_per_voxel:,.0f} bytes per input voxel on {self.device} (one "
                     f"forward, measured); window {shape_text(self.window)} estimated at "
                     f"{self.window_bytes / 2**30:.2f} GiB")
        if self.asked is not None:
            lines.append(self._asked_text())
        return "\n".join(lines)

    def _asked_text(self) -> str:
        c, asked = self.contract, tuple(self.asked or ())
        smallest = c.smallest or (1,) * len(c.factor)
        if not c.valid(asked):
            near = [_nearest(n, m, f) for n, m, f in zip(asked, smallest, c.factor, strict=True)]
            below = [b for b, _ in near]
            above = [a for _, a in near]
            options = " or ".join(shape_text(w) for w in (below, above) if all(v >= m for v, m in zip(w, smallest,
                                                                                            strict=True)))
            return (f"window {shape_text(asked)}: not on the contract's sizes (smallest input + k * factor per axis); "
                    f"nearest: {options}")
        if c.exact and any(a < w for a, w in zip(asked, self.window, strict=True)):
            return (f"window {shape_text(asked)}: accepted, but too small for exact tiling (at least "
                    f"{shape_text(self.window)})")
        return f"window {shape_text(asked)}: accepted" + (", exact tiling possible" if c.exact else "")


def model_info(fields: dict[str, Any], window: Sequence[int] | None = None, device: str | None = None) -> ModelInfo:
    """The facts of the model named by :class:`~densepred.PredictJob`'s model ``fields``
    (``model``, ``model_file``, ``model_kwargs``, ``weights``, ...); ``window``: a window size
    to check against them."""
    net = model_net(fields, "describe")
    c = net.contract
    if window is not None and len(window) != net.dims:
        raise DensePredError(f"window {list(window)} is invalid for this {net.dims}D model; expected {net.dims} sizes "
                             f"like {','.join(['64'] * net.dims)}")
    mode = "exact" if c.exact else "blend"
    first = smallest_exact(c) if c.exact else None
    run = ModelRun.create(net, shaped_image(first or _covering(net), net.in_channels), mode, first, 0.0, None, None,
                          device, Prepared((), ()))
    memory = model_memory(run.net, run.model, run.contract, net.in_channels, run.device, run.memory_format,
                          dtype_of(run.model))
    name = fields.get("model") or str(fields.get("model_file"))
    return ModelInfo(name, net.dims, net.in_channels, memory.channels, c, tuple(run.window),
                     memory.per_voxel, memory.window_bytes(run.window, net.in_channels), str(run.device),
                     None if window is None else tuple(int(v) for v in window))


def _covering(net: Any) -> tuple[int, ...]:
    """An image a blended model's default window fits in whole: twice its window, or twice the
    least accepted size of 64 per axis or more."""
    c = net.sizes
    smallest = c.smallest or (1,) * net.dims
    window = net.window if net.window is not None else tuple(
        m + max(0, math.ceil((DEFAULT_WINDOW - m) / f)) * f for m, f in zip(smallest, c.factor, strict=True))
    return tuple(2 * v for v in ((window,) * net.dims if isinstance(window, int) else window))


def _nearest(n: int, smallest: int, factor: int) -> tuple[int, int]:
    """The accepted sizes just below and above ``n`` on an axis (``n`` itself where accepted)."""
    if n >= smallest and (n - smallest) % factor == 0:
        return n, n
    k = max(0, (n - smallest) // factor)
    return smallest + k * factor, smallest + (k + 1) * factor

