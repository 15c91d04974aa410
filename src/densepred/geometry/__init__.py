"""Layer 1, geometry: shapes of valid-convolution networks, tiles and memory, as plain integers.

No torch, no NumPy, no files (an import-linter contract checks it): everything here is
arithmetic on tuples and can be tested in microseconds.

* :mod:`.network_geometry` - field of view, stride, offset, valid input sizes, FLOPs, activations
* :mod:`.tiles` - how a dense output is cut into tiles, mirror indices
* :mod:`.memory` - a tile's memory estimate and the largest tile that fits a budget
* :mod:`.blocks` - blocks of whole tiles, the units of work of a cluster, and their totals
* :mod:`.pyramid` - multiscale levels, shards and inner chunks of viewer-ready outputs
"""

from .blocks import BlockPlan, columns
from .memory import (
    SMALL_CONV_INPUTS,
    STREAM_SLAB,
    Footprint,
    balanced_tile,
    default_output_tile,
    halved_tile,
    slices_that_fit,
    stream_shard,
    stream_shards,
    tile_bytes,
)
from .network_geometry import MODES, Geometry, LayerGeometry, LayerRow
from .pyramid import (
    INNER_CHUNK,
    VIEWER_SIDE,
    Level,
    box_above,
    inner_chunks,
    level_shard,
    level_transform,
    pyramid,
    shard_boxes,
    shards_meeting,
    source_box,
)
from .tiles import Tile, TileList, TilePlan, axis_starts, pad_low_for, reflect_index, source_window

__all__ = [
    "INNER_CHUNK",
    "MODES",
    "SMALL_CONV_INPUTS",
    "STREAM_SLAB",
    "VIEWER_SIDE",
    "BlockPlan",
    "Footprint",
    "Geometry",
    "LayerGeometry",
    "LayerRow",
    "Level",
    "Tile",
    "TileList",
    "TilePlan",
    "axis_starts",
    "balanced_tile",
    "box_above",
    "columns",
    "default_output_tile",
    "halved_tile",
    "inner_chunks",
    "level_shard",
    "level_transform",
    "pad_low_for",
    "pyramid",
    "reflect_index",
    "shard_boxes",
    "shards_meeting",
    "slices_that_fit",
    "source_box",
    "source_window",
    "stream_shard",
    "stream_shards",
    "tile_bytes",
]
