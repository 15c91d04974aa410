"""Layer 1, geometry: shapes of valid-convolution networks, tiles and memory, as plain integers.

No torch, no NumPy, no files (an import-linter contract checks it): everything here is
arithmetic on tuples and can be tested in microseconds.

* :mod:`.network_geometry` - field of view, stride, offset, valid input sizes, FLOPs, activations
* :mod:`.tiles` - how a dense output is cut into tiles, mirror indices
* :mod:`.memory` - a tile's memory estimate and the largest tile that fits a budget
"""

from .memory import SMALL_CONV_INPUTS, default_output_tile, tile_bytes
from .network_geometry import MODES, Geometry, LayerGeometry, LayerRow
from .tiles import Tile, TilePlan, axis_starts, pad_low_for, reflect_index, source_window

__all__ = [
    "MODES",
    "SMALL_CONV_INPUTS",
    "Geometry",
    "LayerGeometry",
    "LayerRow",
    "Tile",
    "TilePlan",
    "axis_starts",
    "default_output_tile",
    "pad_low_for",
    "reflect_index",
    "source_window",
    "tile_bytes",
]
