"""Memory of a tile's forward pass, and the largest tile that fits a budget: plain arithmetic."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .network_geometry import Geometry

Shape = tuple[int, ...]
# A convolution with at most this many inputs per output (Cin * prod(kernel), a first layer)
# runs on the CPU as one matrix product over an unfolded copy of its input.
SMALL_CONV_INPUTS = 64
# The stream engine feeds this many input slices at a time along the first spatial axis.
STREAM_SLAB = 8
STREAM_SHARD = 64  # the most output slices of a stream written as one shard
STREAM_SHARD_SIDE = 256  # the most output voxels across a stream's shard on its other axes
STREAM_LENGTH = 512  # the default stream (output slices per tile along z): a resume redoes at most one


def stream_shard(length: int) -> int:
    """The output shard along a stream of ``length`` slices: the largest divisor of the length
    from :data:`STREAM_SLAB` to :data:`STREAM_SHARD` (so tiles, and cluster blocks of tiles, stay
    whole shards), else the whole length. A shard is rewritten by each slab written into it,
    so bounding it bounds the memory of a long stream.

    Example:
        >>> stream_shard(2048), stream_shard(300), stream_shard(40), stream_shard(257)
        (64, 60, 40, 257)
    """
    return _divisor_in(length, STREAM_SLAB, STREAM_SHARD)


def stream_shards(tile: Sequence[int]) -> Shape:
    """The output shards of a stream's ``tile``: :func:`stream_shard` along the stream, and
    across it the largest divisor of each side from a quarter of :data:`STREAM_SHARD_SIDE` to
    it (else the whole side). A wide tile is then several shards side by side, which the
    writers share (each its own); shards stay about the size of the other engines' tiles.

    Example:
        >>> stream_shards((512, 1024, 1000)), stream_shards((512, 90, 1021))
        ((64, 256, 250), (64, 90, 1021))
    """
    return (stream_shard(tile[0]), *(_divisor_in(side, STREAM_SHARD_SIDE // 4, STREAM_SHARD_SIDE) for side in tile[1:]))


def _divisor_in(n: int, low: int, high: int) -> int:
    """The largest divisor of ``n`` from ``low`` to ``high`` (``n`` itself where it is at most
    ``high``), else ``n``."""
    return next((d for d in range(min(n, high), low - 1, -1) if n % d == 0), n)


@dataclass(frozen=True)
class Footprint:
    """What a prediction run holds in memory besides the network's activations, per tile.

    The pipeline (:mod:`densepred.pipeline`) reads up to ``prefetch`` batches
    ahead while one is read and one computed, and holds up to ``pending`` computed batches
    while its two writers finish one each. Each input window is held as stored
    (``input_itemsize``) and as float32; each result as logits and probabilities (float32),
    then encoded (``stored_itemsize``) and compressed. With a ``pyramid`` each writer also
    carries its box up the levels: a level's shard (the tile's size) as stored, the shard's
    old and new encoded bytes, and the shard read back for the level above.
    """

    in_channels: int
    n_classes: int
    input_itemsize: int = 4
    stored_channels: int | None = None  # None: all classes
    stored_itemsize: int = 4
    batch: int = 1
    prefetch: int = 2
    pending: int = 2
    pyramid: bool = False
    writers: int = 2

    def bytes(self, geometry: Geometry, output_tile: Sequence[int], mode: str) -> int:
        """Estimated peak memory of a run with this output tile, over the process's baseline.

        A stream holds slabs in flight, not tiles, and rewrites one shard at a time."""
        input_tile = geometry.input_shape_for(output_tile)
        written = output_tile
        stored = self.n_classes if self.stored_channels is None else self.stored_channels
        levels = self.writers * 3 * stored * math.prod(output_tile) * self.stored_itemsize if self.pyramid else 0
        read_block = 0
        if mode == "stream":  # the reader keeps up to two blocks of the window's rows as stored (io.WindowRows)
            read_block = 2 * min(STREAM_SHARD, input_tile[0]) * math.prod(input_tile[1:]) * self.input_itemsize
            input_tile = (min(STREAM_SLAB, input_tile[0]), *input_tile[1:])
            written = (stream_shard(output_tile[0]), *output_tile[1:])
            output_tile = (min(STREAM_SLAB, output_tile[0]), *output_tile[1:])
        input_voxels, output_voxels = math.prod(input_tile), math.prod(output_tile)
        windows = (self.prefetch + 2) * self.batch * self.in_channels * input_voxels * (4 + self.input_itemsize)
        windows += self.in_channels * read_block
        compute = self.batch * tile_bytes(geometry, output_tile, mode)
        results = (self.pending + 3) * self.batch * self.n_classes * output_voxels * 4
        encoded = 2 * (self.pending + 1) * stored * math.prod(written) * self.stored_itemsize
        return windows + compute + results + encoded + levels

    def device_bytes(self, geometry: Geometry, output_tile: Sequence[int], mode: str) -> int:
        """Estimated peak of GPU memory: the activations; the inputs in flight (``prefetch``
        queued, one being copied up, one computed: copies run beside the compute); the logits
        and probabilities of the batch computed and the probabilities of the one being copied
        down. A stream holds slabs, not tiles."""
        input_tile = geometry.input_shape_for(output_tile)
        if mode == "stream":
            input_tile = (min(STREAM_SLAB, input_tile[0]), *input_tile[1:])
            output_tile = (min(STREAM_SLAB, output_tile[0]), *output_tile[1:])
        inputs = (self.prefetch + 2) * 4 * self.in_channels * math.prod(input_tile)
        outputs = 3 * 4 * self.n_classes * math.prod(output_tile)
        return self.batch * (tile_bytes(geometry, output_tile, mode) + inputs + outputs)


def default_output_tile(geometry: Geometry, output_shape: Sequence[int], mode: str, budget_bytes: int,
                        cost: Callable[[Shape], int] | None = None) -> Shape:
    """The largest output tile, a multiple of the stride and about as many voxels long on
    every axis (for a stream: :data:`STREAM_LENGTH` slices long, the cross-section grown),
    whose ``cost`` (default: the activations, :func:`tile_bytes`) fits in ``budget_bytes``;
    never larger than the output. The smallest tile is returned even when it does not fit:
    the caller decides what that means.

    The result's input (tile + FOV - 1) is MFP-valid unless the output itself is smaller.
    """
    estimate_mode = "mfp" if mode in ("mfp", "auto") else mode
    output_shape = tuple(output_shape)
    cost = cost or (lambda tile: tile_bytes(geometry, tile, estimate_mode))

    def tile_for(side: int) -> Shape:
        tile = tuple(min(t * math.ceil(side / t), o) for t, o in zip(geometry.stride, output_shape, strict=True))
        if mode == "stream":  # a long stream along the first axis; the cross-section by memory
            return (min(output_shape[0], STREAM_LENGTH), *tile[1:])
        return tile

    best, side, largest = tile_for(1), 1, tile_for(max(output_shape))
    while True:
        side = max(side + 1, int(side * 1.15))
        candidate = tile_for(side)
        if candidate == best:
            if candidate == largest:
                return best
            continue
        if cost(candidate) > budget_bytes:
            return best
        best = candidate


def halved_tile(shape: Sequence[int], limit: int, stride: Sequence[int], fits: Callable[[Shape], bool],
                floor: int) -> Shape | None:
    """``shape`` with its longest axis halved (up to a multiple of the stride), again and again,
    until it holds at most ``limit`` voxels and ``fits``; None where that would go below
    ``floor`` voxels. Halving a shape keeps its tiles on a power-of-two grid, as chunks are.

    Example:
        >>> halved_tile((128, 1024, 1024), 2**22, (1, 1, 1), lambda t: True, 2**21)
        (128, 128, 256)
    """
    tile = list(shape)
    while math.prod(tile) > limit or not fits(tuple(tile)):
        axis = max(range(len(tile)), key=lambda a: tile[a])
        half = stride[axis] * math.ceil(tile[axis] / 2 / stride[axis])
        if half == tile[axis] or math.prod(tile) // tile[axis] * half < floor:
            return None
        tile[axis] = half
    return tuple(tile)


def balanced_tile(tile: Sequence[int], output_shape: Sequence[int], stride: Sequence[int], mode: str) -> Shape:
    """``tile`` shrunk on each axis to the smallest multiple of the stride that needs no more
    tiles: the work is spread evenly instead of the last tile overlapping its neighbour (a
    stream's length to a multiple of :data:`STREAM_SLAB`, so that its shard divides it).

    Example:
        >>> balanced_tile((512, 96, 96), (600, 200, 90), (8, 8, 8), "stream")
        (304, 72, 90)
    """
    result = []
    for axis, (t, o, s) in enumerate(zip(tile, output_shape, stride, strict=True)):
        step = STREAM_SLAB if mode == "stream" and axis == 0 else s
        per_tile = math.ceil(o / math.ceil(o / t))
        result.append(min(t, o, step * math.ceil(per_tile / step)))
    return tuple(result)


def tile_bytes(geometry: Geometry, output_tile: Sequence[int], mode: str, itemsize: int = 4) -> int:
    """Estimated memory of one tile's forward pass: twice its largest layer (input plus
    output), for the convolution's scratch space and the fragment reshuffle."""
    input_tile = geometry.input_shape_for(output_tile)
    if mode == "mfp" and not geometry.is_valid(input_tile, "mfp"):
        input_tile = geometry.nearest_valid(input_tile, "mfp")[1]
    if mode == "stream":  # activations of one slab (plus the halo) at a time
        input_tile = (min(input_tile[0], STREAM_SLAB + geometry.fov[0] - 1), *input_tile[1:])
    return 2 * geometry.activation_bytes(input_tile, mode, itemsize, unfold_up_to=SMALL_CONV_INPUTS)


def slices_that_fit(cost: Callable[[int], int], depth: int, budget_bytes: int) -> int:
    """How many slices of a stack one forward pass takes: the most, up to ``depth``, whose
    ``cost(slices)`` fits ``budget_bytes`` (at least one)."""
    low, high = 1, max(int(depth), 1)
    while low < high:
        middle = (low + high + 1) // 2
        if cost(middle) <= budget_bytes:
            low = middle
        else:
            high = middle - 1
    return low
