"""Memory of a tile's forward pass, and the largest tile that fits a budget: plain arithmetic."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .network_geometry import Geometry

Shape = tuple[int, ...]
# A convolution with at most this many inputs per output (Cin * prod(kernel), a first layer)
# runs on the CPU as one matrix product over an unfolded copy of its input.
SMALL_CONV_INPUTS = 64


def default_output_tile(geometry: Geometry, output_shape: Sequence[int], mode: str,
                        budget_bytes: int, itemsize: int = 4) -> Shape:
    """The largest output tile, a multiple of the stride and about as many voxels long on
    every axis, whose activations fit in ``budget_bytes``; never larger than the output.

    The result's input (tile + FOV - 1) is MFP-valid unless the output itself is smaller.
    """
    estimate_mode = "mfp" if mode in ("mfp", "auto") else mode
    output_shape = tuple(output_shape)

    def tile_for(side: int) -> Shape:
        return tuple(min(t * math.ceil(side / t), o) for t, o in zip(geometry.stride, output_shape, strict=True))

    def fits(tile: Shape) -> bool:
        return tile_bytes(geometry, tile, estimate_mode, itemsize) <= budget_bytes

    best, side = tile_for(1), 1
    while True:
        side = max(side + 1, int(side * 1.15))
        candidate = tile_for(side)
        if candidate == best:
            if candidate == output_shape:
                return best
            continue
        if not fits(candidate):
            return best
        best = candidate


def tile_bytes(geometry: Geometry, output_tile: Sequence[int], mode: str, itemsize: int = 4) -> int:
    """Estimated memory of one tile's forward pass: twice its largest layer (input plus
    output), for the convolution's scratch space and the fragment reshuffle."""
    input_tile = geometry.input_shape_for(output_tile)
    if mode == "mfp" and not geometry.is_valid(input_tile, "mfp"):
        input_tile = geometry.nearest_valid(input_tile, "mfp")[1]
    return 2 * geometry.activation_bytes(input_tile, mode, itemsize, unfold_up_to=SMALL_CONV_INPUTS)


def slices_that_fit(geometry: Geometry, output_plane: Sequence[int], depth: int, mode: str,
                    budget_bytes: int, itemsize: int = 4) -> int:
    """How many slices of a stack one forward pass takes: the most, up to ``depth``, whose
    activations fit ``budget_bytes`` (at least one). ``geometry`` is a stacked 2D geometry."""
    low, high = 1, max(int(depth), 1)
    while low < high:
        middle = (low + high + 1) // 2
        if tile_bytes(geometry, (middle, *output_plane), mode, itemsize) <= budget_bytes:
            low = middle
        else:
            high = middle - 1
    return low
