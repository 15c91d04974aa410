"""Dense prediction with a model written elsewhere (:func:`densepred.from_torch`).

``mode="exact"`` tiles crop-only (:func:`densepred.geometry.overlap.exact_axis`): each window's
output is cut to the part it owns and written straight into the result, which equals one
whole-volume forward. ``mode="blend"`` overlaps windows and weighs each with a Gaussian
(sigma = window / 8, as nnU-Net and MONAI), for models that cannot be tiled exactly; the
weights are products of per-axis weights, so their sum is one small vector per axis, never a
second volume. ``mode="auto"`` is exact when the model's contract allows it, else blend (with
a warning). Flip test-time augmentation averages the logits of every flip of each window in
a running sum on the device.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from ...errors import DensePredError
from ...geometry import BlockPlan
from ...geometry.overlap import AxisWindow, blend_axis, exact_axis, exact_shard
from ...io import ChannelFirst
from ...io.done_ids import DoneIds
from ...networks.devices import fast_memory_format, in_memory_format, on_device, resolve_device
from ...networks.foreign import ForeignNet, StackNet, TilingContract
from ...networks.precision import FLOAT32, Precision, precision_for
from ...networks.precision_speed import model_key, refuse_if_slower
from ...pipeline import run_pipeline
from ...progress import Progress, ProgressOption
from ..planning.model_window import (
    DEFAULT_WINDOW,
    IN_FLIGHT,
    OverBudget,
    budget_window,
    window_for,
)
from .exact_order import ExactOrder, ExactPiece
from .preprocess import Prepared, resolve
from .transfers import Download, Transfers, Upload
from .window_options import channel_orders, check_orders, overlap_value, python_ints, tta_axes
from .windows import activated, gaussian, outer, read_window, window_logits

log = logging.getLogger("densepred")

MODES = ("auto", "exact", "blend")
# windows queued besides those being read, computed and written: IN_FLIGHT counts the queued
# one and the one in the reading (or writing) thread, as the memory budget does
PREFETCH = PENDING = IN_FLIGHT - 1
Item = TypeVar("Item")


@dataclass(frozen=True)
class RunOutput:
    """What a run writes, fixed with its window: the output's shape, its shards and the
    model's output channels."""

    shape: tuple[int, ...]
    shard: tuple[int, ...]
    shards: BlockPlan
    channels: int


@dataclass
class ModelRun:
    """One prediction of a :class:`ForeignNet` over a source: its mode, window, views, device."""

    net: ForeignNet
    source: ChannelFirst
    mode: str
    window: tuple[int, ...]
    overlap: float
    flips: list[tuple[int, ...]]
    channel_map: dict[int, Sequence[int]] | None
    device: torch.device
    model: Any
    contract: TilingContract  # the full contract for exact tiling; the sizes alone for blending
    memory_format: torch.memory_format | None = None  # the model's activations (channels-last on the CPU)
    prepared: Prepared | None = None  # the input's preprocessing, measured over the whole image
    precision: Precision = FLOAT32  # the arithmetic the model computes in (:mod:`densepred.networks.precision`)
    written: RunOutput | None = None  # what the run writes, once its window is chosen
    heap_kept: bool = False  # whether its windows keep freed heap blocks (planning.model_window.heap_kept)

    @classmethod
    def create(cls, net: ForeignNet, source: ChannelFirst, mode: str, window: Sequence[int] | int | None,
               overlap: float, tta: Any, channel_map: Any, device: Any, prepared: Prepared | None = None,
               memory_limit: int | None = None, in_memory: bool = False, window_given: bool = True,
               precision: Precision | str | None = None) -> ModelRun:
        """The run; ``prepared``: the preprocessing measured already (by a cluster's client),
        else it is measured here. Without a window, an exact run takes the largest that fits
        the memory budget (``memory_limit``, or the default; ``in_memory``: the result counts
        against it); see :mod:`densepred.running.planning.model_window`. ``mode="auto"`` blends
        when even the smallest exact window does not fit. ``window_given``: whether a ``window``
        came from the user (else from an interrupted run's record), for the over-budget warning;
        ``precision``: the arithmetic (float32, tf32, bfloat16, float16), checked on the device."""
        asked_for = (mode, window, tta, channel_map)
        dims = (net.flat if isinstance(net, StackNet) else net).dims  # a 2D model's, over a stack too
        window, overlap = python_ints(window), overlap_value(overlap)
        tta, channel_map = tta_axes(tta, dims), channel_orders(channel_map, dims)
        orders = channel_map  # as given: a stack's axes are shifted below
        net, source = source_of(net, source)
        if isinstance(net, StackNet):
            window, tta, channel_map = _over_stack(net, window, tta, channel_map)
        mode = _mode(net, mode)
        flips = _flips(net, tta, channel_map)
        contract = net.contract if mode == "exact" else net.sizes
        asked = window if window is not None else net.window
        window = window_for(net, contract, window, source.spatial_shape, mode, contract.context_with(flips))
        device = resolve_device(device)
        precision = precision_for(precision, device)
        refuse_if_slower(model_key(net), device, precision.name)
        model = on_device(net.model, device)
        memory_format = fast_memory_format(model, device)
        model = in_memory_format(model, memory_format)
        run = cls(net, source, mode, window, overlap, flips, channel_map, device, model, contract, memory_format,
                  precision=precision)
        budgeted = (asked is None and mode == "exact") or memory_limit is not None
        try:
            reason = ("it was given (--tile or window=)" if asked is not None and window_given else
                      "the interrupted run chose it" if asked is not None else "blending keeps the model's window")
            run.window, channels, run.heap_kept = budget_window(run, asked is None and mode == "exact", budgeted,
                                                                memory_limit, in_memory, reason)
        except OverBudget as exc:
            if asked_for[0] != "auto":
                raise
            log.warning("%s; blending overlapping windows instead (mode 'exact' with a larger memory limit "
                        "would be exact)", str(exc).split("; raise")[0])
            _, window, tta, channel_map = asked_for
            return cls.create(net, source, "blend", window, overlap, tta, channel_map, device, prepared,
                              memory_limit, in_memory, window_given, precision)
        check_orders(orders, channels)
        if net.output == "softmax" and channels == 1:
            raise DensePredError("this model returns one channel, and a softmax over one channel is 1 everywhere: "
                                 "pass --activation sigmoid for a probability, or --activation identity for the "
                                 "values as the model returns them (output= in from_torch)")
        run.prepared = prepared if prepared is not None else resolve(net, source)
        run.written = RunOutput(run.output_shape, run.shard, run.shard_plan(), channels)
        return run

    def shard_plan(self) -> BlockPlan:
        """The output's shards (:attr:`shard`), one per block: the grid a run's record names."""
        ones = (1,) * len(self.window)
        return BlockPlan.create(self.output_shape, self.shard, ones, ones)

    @property
    def grid(self) -> TilingContract:
        """The contract counted in output voxels, what windows are placed by (the contract
        itself for a model whose output is at the input's scale: :mod:`densepred.geometry.scale`)."""
        return self.contract.in_output_units()

    @property
    def extent(self) -> tuple[int, ...]:
        """The image's extent in output voxels, before the crop."""
        return self.contract.output_extent(self.source.spatial_shape)

    @property
    def grid_window(self) -> tuple[int, ...]:
        return self.contract.output_extent(self.window)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(s - 2 * c for s, c in zip(self.extent, self.contract.crop, strict=True))

    @property
    def output_window(self) -> tuple[int, ...]:
        return tuple(w - 2 * c for w, c in zip(self.grid_window, self.contract.crop, strict=True))

    @property
    def shard(self) -> tuple[int, ...]:
        """The output write unit: for exact runs one that windows own whole (:func:`exact_shard`)."""
        if self.mode != "exact":
            return self.output_window
        g = self.grid
        return tuple(exact_shard(s, w, f, cr, ctx) for s, w, f, cr, ctx in zip(
            self.extent, self.grid_window, g.factor, g.crop, g.context_with(self.flips), strict=True))

    def exact_axes(self) -> list[list[AxisWindow]]:
        """The exact windows of each axis (:func:`exact_axis`), in output voxels."""
        g = self.grid
        return [exact_axis(s, w, f, cr, ctx) for s, w, f, cr, ctx in
                zip(self.extent, self.grid_window, g.factor, g.crop, g.context_with(self.flips), strict=True)]

    def exact_windows(self) -> list[ExactPiece]:
        """Every exact window that owns part of the output, in C order."""
        return [piece for _, piece in self.windows_in(tuple((0, n) for n in self.output_shape))]

    def windows_in(self, box: Sequence[tuple[int, int]],
                   axes: list[list[AxisWindow]] | None = None) -> list[tuple[tuple[int, ...], ExactPiece]]:
        """The exact windows whose owned box meets ``box``, in C order: each one's index on every
        axis and its piece. Only the windows near ``box`` are made (a cluster block of a run of
        millions of windows looks at its own), from ``axes`` (:meth:`exact_axes`) when given."""
        axes = self.exact_axes() if axes is None else axes
        reach = [[i for i, w in enumerate(axis) if w.own_lo < hi and w.own_hi > lo] for axis, (lo, hi) in
                 zip(axes, box, strict=True)]
        found = []
        for index in itertools.product(*reach):
            parts = [axis[i] for axis, i in zip(axes, index, strict=True)]
            owned = tuple((p.own_lo, min(p.own_hi, n)) for p, n in zip(parts, self.output_shape, strict=True))
            if all(a < b for a, b in owned):
                found.append((index, ExactPiece(tuple(p.start for p in parts), owned)))
        return found

    def write_exact(self, sink: Any, done: DoneIds, done_log: Any, progress: ProgressOption) -> int:
        """Every exact window that owns part of a shard not in ``done``, in C order, into
        ``sink``; a shard goes to ``done_log`` once the last window that reaches into it is
        written. The windows are made as they are read (:class:`ExactOrder`), and only the
        shards being written are counted. Returns the shards computed."""
        order = ExactOrder.create(self.exact_axes(), self.shard, self.output_shape, done)
        left: dict[int, int] = {}  # the shards begun, each with its windows still to write
        bar = Progress(order.voxels(), "predict (exact)", progress)

        def take(item: tuple[tuple[int, ...], ExactPiece], result: np.ndarray) -> None:
            index, piece = item
            sink.write(tuple(slice(a, b) for a, b in piece.box), self.crop_owned(piece, result))
            for shard_id, reaching in order.shards_of(index):
                left[shard_id] = left.get(shard_id, reaching) - 1
                if not left[shard_id]:
                    del left[shard_id]
                    done_log.append(shard_id)
            bar.update(math.prod(b - a for a, b in piece.box))

        try:
            self.forward_each(order.pieces(), take, starts=lambda item: item[1].starts, poll=bar.poll)
        finally:
            bar.close()
        return order.shards_to_do

    def crop_owned(self, piece: ExactPiece, result: np.ndarray) -> np.ndarray:
        """The window's outputs (``result``, its :meth:`forward`) over the box it owns."""
        return result[(slice(None), *(slice(a - s, b - s) for (a, b), s in zip(piece.box, piece.starts,
                                                                               strict=True)))]

    def blend_axes(self) -> list[list[int]]:
        factor = self.grid.factor
        return [blend_axis(s, w, f, 0.0 if axis in self.net.independent_axes else self.overlap)
                for axis, (s, w, f) in enumerate(zip(self.extent, self.grid_window, factor, strict=True))]

    def blend_windows(self) -> Iterator[tuple[int, ...]]:
        """Window starts in C order, those beyond the output (its padding only) left out."""
        for starts in itertools.product(*self.blend_axes()):
            if all(s < n for s, n in zip(starts, self.output_shape, strict=True)):
                yield starts

    def weigh(self, starts: Sequence[int], result: np.ndarray) -> tuple[tuple[tuple[int, int], ...], np.ndarray]:
        """The box a blended window covers in the output, and its outputs (``result``, its
        :meth:`forward`) Gaussian-weighted there."""
        box = tuple((s, min(s + n, m)) for s, n, m in zip(starts, self.output_window, self.output_shape, strict=True))
        weights = [gaussian(n)[:b - a] for n, (a, b) in zip(self.output_window, box, strict=True)]
        return box, result[(slice(None), *(slice(0, b - a) for a, b in box))] * outer(weights)

    def weight_sum(self, box: Sequence[tuple[int, int]]) -> np.ndarray:
        """The sum of every window's weight over ``box`` (a product of per-axis sums)."""
        sums = []
        for starts, n, (a, b), size in zip(self.blend_axes(), self.output_window, box, self.extent, strict=True):
            total = np.zeros(max(size, max(starts) + n), np.float64)
            for s in starts:
                total[s:s + n] += gaussian(n)
            sums.append(total[a:b])
        return outer(sums)

    def write_in(self, box: Sequence[tuple[int, int]],
                 write: Callable[[tuple[tuple[int, int], ...], np.ndarray], None]) -> None:
        """The run's final values over an output ``box`` (a block of whole shards), handed to
        ``write(part, values)`` in parts that partition it: exact windows each give the part of
        what they own inside the box; blended windows are summed over the box, row after row
        along z as :func:`densepred.running.jobs.model_job` sums them in one process (so the
        bytes are the same), and divided by the weight sum."""
        box = tuple(box)
        if self.mode != "exact":
            write(box, self.blended(box))
            return

        def take(piece: ExactPiece, result: np.ndarray) -> None:
            part = tuple((max(a, lo), min(b, hi)) for (a, b), (lo, hi) in zip(piece.box, box, strict=True))
            owned = self.crop_owned(piece, result)
            write(part, owned[(slice(None), *(slice(lo - a, hi - a) for (a, _), (lo, hi) in
                                              zip(piece.box, part, strict=True)))])

        self.forward_each([piece for _, piece in self.windows_in(box)], take, starts=lambda piece: piece.starts)

    def blended(self, box: Sequence[tuple[int, int]]) -> np.ndarray:
        """The blend over ``box``: every window that meets it, weighted, summed per row of equal
        z start and the rows summed in order, divided by the weight sum."""
        sizes = list(zip(self.output_window, box, strict=True))
        windows = [starts for starts in self.blend_windows()
                   if all(s < hi and s + n > lo for s, (n, (lo, hi)) in zip(starts, sizes, strict=True))]
        sums: dict[str, Any] = {"z": None, "row": None, "total": None}

        def end_row() -> None:
            if sums["row"] is not None:
                sums["total"] = sums["row"] if sums["total"] is None else sums["total"] + sums["row"]
            sums["row"] = None

        def take(starts: tuple[int, ...], result: np.ndarray) -> None:
            if starts[0] != sums["z"]:
                end_row()
                sums["z"] = starts[0]
            reach, values = self.weigh(starts, result)
            if sums["row"] is None:
                sums["row"] = np.zeros((values.shape[0], *(b - a for a, b in box)), np.float32)
            row = sums["row"]
            part = tuple((max(a, lo), min(b, hi)) for (a, b), (lo, hi) in zip(reach, box, strict=True))
            into = (slice(None), *(slice(lo - b0, hi - b0) for (lo, hi), (b0, _) in zip(part, box, strict=True)))
            row[into] = row[into] + values[(slice(None), *(slice(lo - a, hi - a) for (lo, hi), (a, _) in
                                                           zip(part, reach, strict=True)))]

        # windows in C order: those of one z start follow each other, rows in order
        self.forward_each(windows, take)
        end_row()
        assert sums["total"] is not None, "every output voxel lies in a blend window"
        return (sums["total"] / self.weight_sum(box)[None]).astype(np.float32)

    def forward(self, starts: Sequence[int]) -> np.ndarray:
        """The activated outputs of the window whose outputs start at ``starts`` (output voxels)."""
        return self.compute_window(self._read_window(starts))

    def compute_window(self, x: np.ndarray) -> np.ndarray:
        """The activated outputs of an input window ``x`` (``(C, *window)`` float32, as read and
        preprocessed), on the host."""
        return self._compute(self._upload(x)).numpy()

    def forward_each(self, items: Iterable[Item], take: Callable[[Item, np.ndarray], None], *,
                     starts: Callable[[Item], Sequence[int]] = lambda item: item,
                     poll: Callable[[], None] | None = None) -> None:
        """``take(item, self.forward(starts(item)))`` for every item, in order, from one
        background thread, while the next windows are read (another thread) and computed (this
        one): the same numbers as one window after another. ``poll`` runs before each forward
        (a progress bar's cancel check). On CUDA the windows' copies to and from the device run
        on streams of their own beside the compute (:mod:`.transfers`)."""

        def compute(x: Upload) -> Download:
            if poll is not None:
                poll()
            return self._compute(x)

        run_pipeline(items, lambda item: self._upload(self._read_window(starts(item))), compute,
                     lambda item, result: take(item, result.numpy()), prefetch=PREFETCH, pending=PENDING)

    def _read_window(self, starts: Sequence[int]) -> np.ndarray:
        return read_window(self.source, self.contract.input_extent(tuple(starts)), self.window, self.prepared,
                           self.net.padding)

    def _upload(self, x: np.ndarray) -> Upload:
        return self.transfers.upload(x[None])

    def _compute(self, upload: Upload) -> Download:
        logits = window_logits(self.model, self.transfers.take(upload), self.flips, self.channel_map,
                               self.memory_format, self.precision)
        return self.transfers.download(logits, activated(self.net))

    @functools.cached_property
    def transfers(self) -> Transfers:
        return Transfers(self.device)


def source_of(net: ForeignNet, image: Any) -> tuple[ForeignNet, ChannelFirst]:
    """The net and ``image`` as ``(C, *S)``; a 2D model over a stack of 2D images (the rule of
    :class:`~densepred.io.ChannelFirst`) becomes a :class:`StackNet` over ``(C, Z, Y, X)``."""
    source = image if isinstance(image, ChannelFirst) else ChannelFirst(image, net.in_channels, net.dims)
    if not source.stacked:
        return net, source
    return StackNet(net), ChannelFirst(source.image, net.in_channels, 3)


def _over_stack(net: StackNet, window: Any, tta: Any, channel_map: Any) -> tuple[Any, Any, Any]:
    """A 2D model's window, flips and channel map over a stack: z first; a 2D window gets as many
    slices as make about the voxels of a default 3D window."""
    window = window if window is not None else net.flat.window
    if isinstance(window, int):
        window = (window, window)
    if isinstance(window, Sequence) and len(window) == 2:
        window = (max(1, DEFAULT_WINDOW**3 // (int(window[0]) * int(window[1]))), *window)
    if tta is not None:
        tta = tuple(a + 1 for a in tta)
    if channel_map:
        channel_map = {a + 1: order for a, order in channel_map.items()}
    return window, tta, channel_map


def flip_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (the identity first): 2^len(axes) views."""
    return [combo for k in range(len(axes) + 1) for combo in itertools.combinations(axes, k)]


def _flips(net: ForeignNet, axes: tuple[int, ...] | None, channel_map: Any) -> list[tuple[int, ...]]:
    """The flipped views of each window: the identity alone, or every subset of ``axes``
    (checked by :func:`~densepred.running.compute.window_options.tta_axes`)."""
    if axes is None:
        return [()]
    if net.output == "sigmoid" and not channel_map:
        raise DensePredError("flip test-time augmentation of sigmoid outputs (affinities) needs channel_map= "
                             "(per flipped axis, the channel order after flipping back); without it flips would "
                             "mix affinity directions")
    flips = flip_sets(axes)
    log.info("flip test-time augmentation: %d forwards per window (%dx the time)", len(flips), len(flips))
    return flips


def _mode(net: ForeignNet, mode: str) -> str:
    if mode not in MODES:
        raise DensePredError(f"mode {mode!r} is invalid for a model from from_torch; valid: {', '.join(MODES)}")
    if mode == "exact" and not net.contract.exact:
        raise DensePredError(f"mode 'exact' is impossible for this model: {net.contract.reason}; use mode='blend' "
                             "(overlapping windows, Gaussian weights)")
    if mode == "auto":
        if net.contract.exact:
            return "exact"
        log.warning("this model cannot be tiled exactly (%s); blending overlapping windows", net.contract.reason)
        return "blend"
    return mode
