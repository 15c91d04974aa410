"""Which tiles and which engine a run uses: the tile plan under the memory budget, and for
``mode="auto"`` the engine expected to be fastest.

The choice is arithmetic on the network's geometry (FLOPs spent per tile, :mod:`densepred.geometry`)
weighed by what the engines were measured to do with those FLOPs; ``densepred profile --write``
replaces it with a measurement on the machine itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ...errors import DensePredError
from ...geometry import Footprint, Geometry, TilePlan, balanced_tile, default_output_tile, slices_that_fit
from ...io import ChannelFirst
from ...networks import DenseNet
from .memory_budget import MemoryBudget, tile_cost, too_small, warn_if_over

log = logging.getLogger("densepred")

# FLOP for FLOP, the stream engine's convolutions ran at 0.90-0.95 of the speed of the cube
# engines' on the CPU (m36 at output cross-sections of 32 to 96 voxels, docs/BENCHMARKS.md).
STREAM_EFFICIENCY = 0.9
# On a GPU memory rarely bounds the default tile: a cheap net would get one tile of the whole
# volume, and then reading, computing and writing run one after the other. A default tile there
# holds at most a quarter of the output, unless that is below 128^3 output voxels (a GPU
# underused): the pipeline keeps tiles in flight.
FLOW_TILES = 4
FLOW_MIN_VOXELS = 128**3


def plan_and_mode(geometry: Geometry, spatial: Sequence[int], tile_shape: Any, mode: str, mirror: bool,
                  budget: MemoryBudget, footprint: Footprint, device: torch.device,
                  roi: Sequence[tuple[int, int]] | None = None, stacked: bool = False) -> tuple[TilePlan, str]:
    """The tiles of a run (:func:`plan_tiles`) and its engine (:func:`choose_mode`).

    For ``mode="auto"`` with no tile given, a stream (:data:`~densepred.geometry.STREAM_LENGTH`
    slices long, the widest cross-section the budget allows) is weighed against the largest cube
    tile that fits: the one whose convolutions spend fewer FLOPs over the whole image, the
    stream's divided by :data:`STREAM_EFFICIENCY`, is taken. A stream spends less where the
    field of view is large along z, because it pays the z border once per stream, not per tile.
    On a GPU the default tile also leaves several in flight (:data:`FLOW_TILES`).
    """
    flow = device.type == "cuda"
    if mode == "auto" and tile_shape is None and not stacked:
        chosen = _stream_or_cube(geometry, spatial, mirror, budget, footprint, roi, flow)
        if chosen is not None:
            return chosen
    plan = plan_tiles(geometry, spatial, tile_shape, mode, mirror, budget, footprint, roi, stacked, flow)
    return plan, choose_mode(geometry, plan.input_tile, mode, device)


def _stream_or_cube(geometry: Geometry, spatial: Sequence[int], mirror: bool, budget: MemoryBudget,
                    footprint: Footprint, roi: Sequence[tuple[int, int]] | None,
                    flow: bool = False) -> tuple[TilePlan, str] | None:
    """The stream's plan where its tiles spend fewer (weighted) FLOPs than the cube tiles, else
    the cube's; None when no stream fits (the cube plan then says what is wrong)."""
    try:
        stream = plan_tiles(geometry, spatial, None, "stream", mirror, budget, footprint, roi, flow=flow)
    except DensePredError:
        return None
    stream_work = len(stream) * geometry.flops(stream.input_tile, "stream") / STREAM_EFFICIENCY
    try:
        cube = plan_tiles(geometry, spatial, None, "auto", mirror, budget, footprint, roi, flow=flow)
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


def plan_tiles(geometry: Geometry, spatial: Sequence[int], tile_shape: Any, mode: str, mirror: bool,
               budget: MemoryBudget, footprint: Footprint, roi: Sequence[tuple[int, int]] | None = None,
               stacked: bool = False, flow: bool = False) -> TilePlan:
    """The tiles for an image: of ``tile_shape`` (checked; a warning if over the budget), or the
    largest whose estimated peak fits the memory ``budget`` (an error if none does), shrunk to
    as few voxels as cover the image with as many tiles (:func:`~densepred.geometry.balanced_tile`).
    ``flow``: the default tile holds at most 1/:data:`FLOW_TILES` of the output (a GPU's plan).

    For a stack (``geometry`` is a 2D net's :meth:`~densepred.geometry.Geometry.stacked`), a
    ``(y, x)`` tile gets as many slices per forward as fit in the budget.
    """
    padded = TilePlan.create(spatial, geometry.fov, geometry.fov, mirror, roi)
    cost = tile_cost(geometry, mode, footprint, budget)
    if tile_shape is None:
        output_tile = default_output_tile(geometry, padded.output_shape, mode, budget.room, cost)
        limit = _flow_limit(padded.output_shape) if flow else None
        if limit is not None and math.prod(output_tile) > limit:
            output_tile = default_output_tile(geometry, padded.output_shape, mode, budget.room,
                                              lambda t: cost(t) if math.prod(t) <= limit else budget.room + 1)
            log.info("tile kept to at most 1/%d of the output (%s voxels) so reading and writing overlap compute",
                     FLOW_TILES, f"{limit:,}")
        if cost(output_tile) > budget.room:
            raise too_small(budget, cost(output_tile))
        output_tile = balanced_tile(output_tile, padded.output_shape, geometry.stride, mode)
        return TilePlan.create(spatial, geometry.fov, geometry.input_shape_for(output_tile), mirror, roi)
    if stacked and not isinstance(tile_shape, int | np.integer) and len(tuple(tile_shape)) == geometry.ndim - 1:
        plane = _tile_tuple(tile_shape, geometry.ndim - 1)
        check_tile(geometry, (1, *plane), mode)
        output_plane = tuple(min(p - f + 1, o) for p, f, o in
                             zip(plane, geometry.fov[1:], padded.output_shape[1:], strict=True))
        depth = slices_that_fit(lambda z: cost((z, *output_plane)), padded.output_shape[0], budget.room)
        tile_shape = (depth, *plane)
    tile = _tile_tuple(tile_shape, geometry.ndim)
    check_tile(geometry, tile, mode)
    plan = TilePlan.create(spatial, geometry.fov, tile, mirror, roi)
    warn_if_over(budget, cost(plan.output_tile), plan.input_tile)
    return plan


def _flow_limit(output_shape: Sequence[int]) -> int:
    """The most output voxels a GPU's default tile holds (:data:`FLOW_TILES`)."""
    return max(math.prod(output_shape) // FLOW_TILES, FLOW_MIN_VOXELS)


def footprint_for(net: DenseNet, source: ChannelFirst, batch_size: int, stored_channels: int | None = None,
                  stored_itemsize: int = 4) -> Footprint:
    """The buffers of a run of ``net`` on ``source``, for the memory estimate."""
    return Footprint(net.config.in_channels, net.config.n_classes, source.dtype.itemsize, stored_channels,
                     stored_itemsize, batch_size)


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


def _tile_tuple(tile_shape: Any, dims: int) -> tuple[int, ...]:
    tile = (tile_shape,) * dims if isinstance(tile_shape, int | np.integer) else tuple(tile_shape)
    if len(tile) != dims or not all(isinstance(t, int | np.integer) and t > 0 for t in tile):
        raise DensePredError(f"tile_shape {tile_shape!r} is invalid; expected {dims} positive integers (z, y, x order)")
    return tuple(int(t) for t in tile)
