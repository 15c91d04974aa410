"""Which tiles and which engine a run uses: the tile plan under the memory budget, and for
``mode="auto"`` the engine expected to be fastest.

The choice is arithmetic on the network's geometry (FLOPs spent per tile, :mod:`densepred.geometry`)
weighed by what the engines were measured to do with those FLOPs; ``densepred profile --write``
replaces it with a measurement on the machine itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ...errors import DensePredError
from ...geometry import (
    Footprint,
    Geometry,
    TilePlan,
    balanced_tile,
    default_output_tile,
    halved_tile,
    slices_that_fit,
)
from ...io import ChannelFirst, kept_bytes_of
from ...io.encoding import Encoding
from ...networks import DenseNet
from ...networks.memory_budget import MemoryBudget, memory_budget, tile_cost, too_small, warn_if_over
from ...system import available_cores

log = logging.getLogger("densepred")

# Threads that finish tiles (softmax, encoding, compression, the write) beside the next tile's
# compute. On the CPU two, since the cores also compute; on a GPU the host only reads, encodes,
# compresses and writes, so a quarter of its cores, up to MAX_WRITERS.
WRITERS = 2
MAX_WRITERS = 4


def writer_threads(device: torch.device) -> int:
    """How many threads finish a run's tiles on ``device`` (see :data:`WRITERS`).

    Example:
        >>> writer_threads(torch.device("cpu"))
        2
    """
    if device.type == "cpu":
        return WRITERS
    return max(WRITERS, min(MAX_WRITERS, available_cores() // 4))

# FLOP for FLOP, the stream engine's convolutions ran at 0.90-0.95 of the speed of the cube
# engines' on the CPU (m36 at output cross-sections of 32 to 96 voxels, docs/BENCHMARKS.md).
STREAM_EFFICIENCY = 0.9
# Reading and writing overlap compute only across tiles: one tile of the whole volume (what
# the memory budget gives a cheap net, on a GPU or a large CPU) reads, computes and writes one
# after the other, and large buffers pay their first touch in page faults. A default tile
# therefore holds at most 1/FLOW_SHARE of the output and at most FLOW_MAX_VOXELS output voxels
# (never fewer than FLOW_MIN_VOXELS, for per-tile overhead), where that costs at most
# FLOW_EXTRA_WORK more convolution FLOPs per output voxel than the largest tile that fits (a
# smaller tile spends a larger share on the field of view's border); else the nearest larger
# tile that does. Measured on a 1x1x1 net over 128x1024x1024 (docs/BENCHMARKS.md): 4 tiles
# 4.4-5.2 s, 16 tiles of 8.4M voxels 2.3-2.6 s, 32 of 4.2M 1.2-1.5 s, 128 of 2.1M 1.4-1.6 s.
FLOW_SHARE = 16
FLOW_MIN_VOXELS = 128**3
FLOW_MAX_VOXELS = 2**22
FLOW_EXTRA_WORK = 0.1


def plan_and_mode(geometry: Geometry, spatial: Sequence[int], tile_shape: Any, mode: str, mirror: bool,
                  budget: MemoryBudget, footprint: Footprint, device: torch.device,
                  roi: Sequence[tuple[int, int]] | None = None, stacked: bool = False) -> tuple[TilePlan, str]:
    """The tiles of a run (:func:`plan_tiles`) and its engine (:func:`choose_mode`).

    For ``mode="auto"`` with no tile given, a stream (:data:`~densepred.geometry.STREAM_LENGTH`
    slices long, the widest cross-section the budget allows) is weighed against the largest cube
    tile that fits: the one whose convolutions spend fewer FLOPs over the whole image, the
    stream's divided by :data:`STREAM_EFFICIENCY`, is taken. A stream spends less where the
    field of view is large along z, because it pays the z border once per stream, not per tile.
    The default tile also leaves several in flight (:func:`flow_tile`).
    """
    if mode == "auto" and tile_shape is None and not stacked:
        chosen = _stream_or_cube(geometry, spatial, mirror, budget, footprint, roi)
        if chosen is not None:
            return chosen
    plan = plan_tiles(geometry, spatial, tile_shape, mode, mirror, budget, footprint, roi, stacked)
    return plan, choose_mode(geometry, plan.input_tile, mode, device)


def _stream_or_cube(geometry: Geometry, spatial: Sequence[int], mirror: bool, budget: MemoryBudget,
                    footprint: Footprint, roi: Sequence[tuple[int, int]] | None) -> tuple[TilePlan, str] | None:
    """The stream's plan where its tiles spend fewer (weighted) FLOPs than the cube tiles, else
    the cube's; None when no stream fits (the cube plan then says what is wrong)."""
    try:
        stream = plan_tiles(geometry, spatial, None, "stream", mirror, budget, footprint, roi)
    except DensePredError:
        return None
    stream_work = len(stream) * geometry.flops(stream.input_tile, "stream") / STREAM_EFFICIENCY
    try:
        cube = plan_tiles(geometry, spatial, None, "auto", mirror, budget, footprint, roi)
    except DensePredError:  # no cube tile fits the budget; a stream of thin slabs may
        log.info("auto: no cube tile fits the memory budget; streaming tiles of %s", list(stream.input_tile))
        return stream, "stream"
    cube_mode = choose_mode(geometry, cube.input_tile, "auto", torch.device("cpu"))
    cube_work = len(cube) * geometry.flops(cube.input_tile, cube_mode)
    streams = stream_work < cube_work
    log.info("auto: %s tiles of %s spend %.3g FLOP, stream tiles of %s %.3g (weighted); %s",
             cube_mode, list(cube.input_tile), cube_work, list(stream.input_tile), stream_work,
             "streaming" if streams else cube_mode)
    return (stream, "stream") if streams else (cube, cube_mode)


def choose_mode(geometry: Geometry, input_tile: Sequence[int], mode: str, device: torch.device) -> str:
    """The engine for a tile: ``mode`` itself, or for ``"auto"`` the fastest valid one.

    Shift-and-stitch is never the fastest. MFP and dilated convolutions do the same FLOPs
    and measured within 5-10% of each other on the CPU, either way round depending on the
    tile (docs/BENCHMARKS.md); MFP is taken where the tile allows it because it runs only
    undilated convolutions, the kernels every backend optimises first, and dilated
    convolutions serve every other tile. ``densepred profile --write`` measures both and
    stores the faster one in the config.
    """
    if mode != "auto":
        return mode
    return "mfp" if geometry.is_valid(input_tile, "mfp") else "dilated"


MANY_TILES = 10_000  # beyond this a given tile's count is weighed against the default tile's


def plan_tiles(geometry: Geometry, spatial: Sequence[int], tile_shape: Any, mode: str, mirror: bool,
               budget: MemoryBudget, footprint: Footprint, roi: Sequence[tuple[int, int]] | None = None,
               stacked: bool = False) -> TilePlan:
    """The tiles for an image: of ``tile_shape`` (checked; a warning if over the budget), or the
    largest whose estimated peak fits the memory ``budget`` (an error if none does), shrunk to
    as few voxels as cover the image with as many tiles (:func:`~densepred.geometry.balanced_tile`).
    The default tile keeps several tiles in flight where that costs little (:func:`flow_tile`).

    For a stack (``geometry`` is a 2D net's :meth:`~densepred.geometry.Geometry.stacked`), a
    ``(y, x)`` tile gets as many slices per forward as fit in the budget.
    """
    padded = TilePlan.create(spatial, geometry.fov, geometry.fov, mirror, roi)
    cost = tile_cost(geometry, mode, footprint, budget)
    if tile_shape is None:
        output_tile = default_output_tile(geometry, padded.output_shape, mode, budget.room, cost)
        if cost(output_tile) <= budget.room and mode != "stream":  # a stream flows slab by slab
            output_tile = flow_tile(geometry, padded.output_shape, output_tile, lambda t: cost(t) <= budget.room)
        if cost(output_tile) > budget.room:
            raise too_small(budget, cost(output_tile), footprint.batch)
        output_tile = balanced_tile(output_tile, padded.output_shape, geometry.stride, mode)
        return TilePlan.create(spatial, geometry.fov, geometry.input_shape_for(output_tile), mirror, roi)
    if stacked and isinstance(tile_shape, Sequence | np.ndarray) and len(tile_shape) == geometry.ndim - 1:
        plane = _tile_tuple(tile_shape, geometry.ndim - 1, stacked)
        check_tile(geometry, (1, *plane), mode)
        output_plane = tuple(min(p - f + 1, o) for p, f, o in
                             zip(plane, geometry.fov[1:], padded.output_shape[1:], strict=True))
        depth = slices_that_fit(lambda z: cost((z, *output_plane)), padded.output_shape[0], budget.room)
        tile_shape = (depth, *plane)
    tile = _tile_tuple(tile_shape, geometry.ndim, stacked)
    check_tile(geometry, tile, mode)
    plan = TilePlan.create(spatial, geometry.fov, tile, mirror, roi)
    warn_if_over(budget, cost(plan.output_tile), plan.input_tile)
    if len(plan) > MANY_TILES and not stacked:
        _warn_if_many(plan, geometry, spatial, mode, mirror, budget, footprint, roi)
    return plan


def _warn_if_many(plan: TilePlan, geometry: Geometry, spatial: Sequence[int], mode: str, mirror: bool,
                  budget: MemoryBudget, footprint: Footprint, roi: Sequence[tuple[int, int]] | None) -> None:
    """Warn when a given tile cuts the output into many times as many tiles as the default would:
    each tile costs time besides its compute (reading, bookkeeping, a write)."""
    try:
        default = plan_tiles(geometry, spatial, None, mode, mirror, budget, footprint, roi)
    except DensePredError:
        return
    if len(default) * 10 <= len(plan):
        log.warning("tile %s cuts the output into %s tiles, %dx as many as the default tile %s would; each tile "
                    "costs time besides its compute, so this run is slower than it need be: leave the tile out "
                    "(--tile, tile_shape=, the config's tile_shape) or give a larger one", list(plan.input_tile),
                    f"{len(plan):,}", len(plan) // len(default), list(default.input_tile))


def flow_tile(geometry: Geometry, output_shape: Sequence[int], largest: Sequence[int],
              fits: Callable[[Sequence[int]], bool]) -> tuple[int, ...]:
    """``largest`` (the largest default tile that fits), or the output halved along its longest
    axes until it holds at most the flow limit (:data:`FLOW_SHARE`, :data:`FLOW_MAX_VOXELS`)
    and ``fits``, where that spends at most :data:`FLOW_EXTRA_WORK` more FLOPs per output voxel
    than ``largest`` (else the limit is doubled); the choice is logged. Halving the output
    keeps tiles on a power-of-two grid, as chunks are."""
    total, largest = math.prod(output_shape), tuple(largest)
    work = _work_per_voxel(geometry)
    limit = min(max(total // FLOW_SHARE, FLOW_MIN_VOXELS), FLOW_MAX_VOXELS)
    while limit < math.prod(largest):
        tile = halved_tile(output_shape, limit, geometry.stride, fits, FLOW_MIN_VOXELS)
        if tile is not None and work(tile) <= work(largest) * (1 + FLOW_EXTRA_WORK):
            log.info("tile kept to %s output voxels (%.0f%% more work per voxel than the largest tile %s) so "
                     "reading and writing overlap compute", f"{math.prod(tile):,}",
                     100 * (work(tile) / work(largest) - 1), list(largest))
            return tile
        limit *= 2
    return largest


def _work_per_voxel(geometry: Geometry) -> Callable[[Sequence[int]], float]:
    # MFP's FLOPs are the dilated engine's within a few percent, and a tile clipped to a thin
    # output need not be MFP-valid
    return lambda tile: geometry.flops(geometry.input_shape_for(tile), "dilated") / math.prod(tile)


def footprint_for(net: DenseNet, source: ChannelFirst, batch_size: int, device: torch.device,
                  stored_channels: int | None = None, stored_itemsize: int = 4, pyramid: bool = False) -> Footprint:
    """The buffers of a run of ``net`` on ``source`` on ``device``, for the memory estimate."""
    return footprint_on(device, net.config.in_channels, net.config.n_classes, source.dtype.itemsize,
                        stored_channels, stored_itemsize, batch_size, pyramid)


def footprint_on(device: torch.device, in_channels: int, n_classes: int, input_itemsize: int = 4,
                 stored_channels: int | None = None, stored_itemsize: int = 4, batch_size: int = 1,
                 pyramid: bool = False) -> Footprint:
    """A run's buffers on ``device``: as many writers as it runs (:func:`writer_threads`), each
    with a batch waiting for it."""
    writers = writer_threads(device)
    return Footprint(in_channels, n_classes, input_itemsize, stored_channels, stored_itemsize, batch_size,
                     pending=max(2, writers), pyramid=pyramid, writers=writers)


def source_geometry(geometry: Geometry, source: ChannelFirst) -> Geometry:
    """The geometry tiles are planned with: the net's, or for a stack of 2D images its stacked form."""
    return geometry.stacked() if source.stacked else geometry


def check_tile(geometry: Geometry, tile: Sequence[int], mode: str) -> None:
    """Raise a :class:`DensePredError` listing the nearest valid tiles if ``tile`` is invalid."""
    needed = "mfp" if mode == "mfp" else "dilated"
    if geometry.is_valid(tile, needed):
        return
    choices = geometry.nearest_valid_text(tile, needed)
    why = ("is smaller than the field of view " + str(list(geometry.fov))) if needed == "dilated" else (
        "is not valid for MFP (per pooling layer (conv_out - p + 1) % p must be 0)")
    raise DensePredError(f"tile_shape {list(tile)} {why}; nearest valid tile shapes: {choices}")


def _tile_tuple(tile_shape: Any, dims: int, stacked: bool = False) -> tuple[int, ...]:
    whole = isinstance(tile_shape, int | np.integer) and not isinstance(tile_shape, bool | np.bool_)
    tile = (tile_shape,) * dims if whole else tuple(tile_shape) if isinstance(tile_shape, Sequence | np.ndarray) else ()
    if len(tile) != dims or not all(isinstance(t, int | np.integer) and not isinstance(t, bool | np.bool_) and t > 0
                                    for t in tile):
        axes = "(y, x) per section, or (z, y, x)" if stacked else "(" + ", ".join("zyx"[3 - dims:]) + ")"
        raise DensePredError(f"tile_shape {tile_shape!r} is invalid; expected a positive integer, or one per axis: "
                             f"{axes}")
    return tuple(int(t) for t in tile)


RESUMED = ("the interrupted run planned it (a resume keeps its tiles); start again with --overwrite to plan "
           "for this limit")


def job_tiles(job: Any, config_batch: int | None, net: DenseNet, source: ChannelFirst, encoding: Encoding,
              previous: dict[str, Any] | None, device: torch.device,
              pyramid: bool) -> tuple[Geometry, TilePlan, str, int, int]:
    """A file job's geometry over its input (a 2D net over a stack: slice by slice), tiles,
    engine and batch size (given, else those of the interrupted run ``previous``, else the
    config's ``config_batch``), and the estimated peak memory of the run (``pyramid``: the
    writers build pyramid levels as they write).

    A resumed run takes its recorded tile as it was planned (after clipping to the image or
    region), without checking it again for the mode: it was valid when first planned.
    """
    geometry = source_geometry(net.geometry, source)
    tiles = previous["tiles"] if previous else None
    # a resume keeps the engine the interrupted run chose, also when auto chose it
    mode = tiles["mode"] if tiles and job.mode in (None, "auto") else job.mode if job.mode is not None else net.mode
    batch = job.batch_size if job.batch_size is not None else (
        tiles["batch_size"] if tiles else (config_batch or 1))
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise DensePredError(f"batch size {batch!r} is invalid; expected a positive integer")
    roi = output_roi(job.roi, source.spatial_shape, geometry.offset, geometry.border_high, job.mirror)
    budget = memory_budget(job.memory_limit, device).less(kept_bytes_of(source))
    footprint = footprint_for(net, source, batch, device, encoding.channels or 1, encoding.stored_dtype.itemsize,
                              pyramid)
    if job.tile is None and tiles is not None:
        plan = TilePlan.create(source.spatial_shape, geometry.fov, tiles["input_tile"], job.mirror, roi)
        engine_mode = choose_mode(geometry, plan.input_tile, mode, device)
        warn_if_over(budget, tile_cost(geometry, engine_mode, footprint, budget)(plan.output_tile), plan.input_tile,
                     RESUMED)
    else:
        tile = job.tile if job.tile is not None else net.tile_shape
        plan, engine_mode = plan_and_mode(geometry, source.spatial_shape, tile, mode, job.mirror, budget, footprint,
                                          device, roi, source.stacked)
    estimate = budget.baseline + tile_cost(geometry, engine_mode, footprint, budget)(plan.output_tile)
    return geometry, plan, engine_mode, batch, estimate


def output_roi(roi: Sequence[tuple[int, int]] | None, image: Sequence[int], offset: Sequence[int],
               border_high: Sequence[int], mirror: bool) -> list[tuple[int, int]] | None:
    """A region of interest in image coordinates (voxel centres) -> the same voxels in the dense
    output. Without mirroring only centres at least the border away from the edges have a window."""
    if roi is None:
        return None
    roi = [(int(a), int(b)) for a, b in roi]
    if mirror:
        low, high = [0] * len(image), list(image)
    else:
        low, high = list(offset), [n - b for n, b in zip(image, border_high, strict=True)]
    if len(roi) != len(image) or any(not lo <= a < b <= hi for (a, b), lo, hi in zip(roi, low, high, strict=True)):
        valid = ",".join(f"{lo}:{hi}" for lo, hi in zip(low, high, strict=True))
        given = ",".join(f"{a}:{b}" for a, b in roi)
        why = "" if mirror else " (without --mirror, voxels nearer the edge than the network's border have no window)"
        raise DensePredError(f"region of interest {given} is invalid for an image of shape {list(image)}; "
                             f"it must lie within {valid}{why}")
    shift = [0] * len(image) if mirror else list(offset)
    return [(a - s, b - s) for (a, b), s in zip(roi, shift, strict=True)]
