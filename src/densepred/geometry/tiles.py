"""How a dense prediction is cut into tiles: plain arithmetic, no torch, no I/O.

Output tiles do not overlap. Each reads its input window, the output tile plus the
network border. The last tile on an axis is shifted back to end at the image edge, so no
tile ever sees invented data and the result does not depend on the tile shape::

    output  |<- tile 0 ->|<- tile 1 ->|<- tile 2 ->|
                                     |<- last tile ->|     shifted back, overlaps tile 2
    input   |<- tile 0 + FOV - 1 ->|
                 ...

With ``mirror`` the image is padded (NumPy ``reflect`` mode: mirrored about the edge voxel,
which is not repeated) by ``offset`` below and ``FOV - 1 - offset`` above, so the output
covers the whole image. Tile coordinates are in that padded frame; :func:`source_window`
maps them back to the stored image.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import DensePredError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Tile:
    """One output tile: its grid position, the box it computes and the box it owns.

    Computed boxes of the last tiles on an axis overlap their neighbours (they are shifted
    back); owned boxes partition the output, so every voxel is written by exactly one tile
    and the result does not depend on the order tiles finish in. Owned boxes start at
    multiples of the tile shape: they are the chunks of an output chunked like the tiles::

        computed  |<-- 0 -->|<-- 1 -->|
                                 |<-- 2 -->|     (shifted back)
        owned     |<-- 0 -->|<-- 1 -->|<2>|
    """

    index: Shape
    output_start: Shape
    output_shape: Shape
    owned_start: Shape
    owned_shape: Shape

    def output_slices(self) -> tuple[slice, ...]:
        """The computed box in the output."""
        return _slices(self.output_start, self.output_shape)

    def owned_slices(self) -> tuple[slice, ...]:
        """The box this tile writes, in the output."""
        return _slices(self.owned_start, self.owned_shape)

    def owned_in_tile(self) -> tuple[slice, ...]:
        """The owned box in the tile's own computed output."""
        starts = tuple(o - s for o, s in zip(self.owned_start, self.output_start, strict=True))
        return _slices(starts, self.owned_shape)


def _slices(start: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(s, s + n) for s, n in zip(start, shape, strict=True))


@dataclass(frozen=True)
class TilePlan:
    """The tiles that cover the dense output of an image.

    Example:
        >>> plan = TilePlan.create((50, 40), fov=(9, 9), input_tile=(24, 24), mirror=False)
        >>> plan.output_shape, plan.output_tile, plan.grid
        ((42, 32), (16, 16), (3, 2))
        >>> [t.output_start for t in plan.tiles()][:3]
        [(0, 0), (0, 16), (16, 0)]
    """

    image_shape: Shape
    fov: Shape
    pad_low: Shape
    pad_high: Shape
    output_shape: Shape
    output_tile: Shape
    origin: Shape = ()  # where the output starts in the full dense output (a region of interest)

    @classmethod
    def create(cls, image_shape: Sequence[int], fov: Sequence[int], input_tile: Sequence[int],
               mirror: bool, roi: Sequence[tuple[int, int]] | None = None) -> TilePlan:
        """Tiles of ``input_tile`` over the dense output, or over the part ``roi`` of it.

        ``roi`` is ``[(start, stop), ...]`` per axis in the coordinates of the full dense output
        (with ``mirror`` those are the image's own coordinates).
        """
        image_shape, fov, input_tile = tuple(image_shape), tuple(fov), tuple(input_tile)
        pad_low = pad_low_for(fov) if mirror else (0,) * len(fov)
        pad_high = tuple(f - 1 - lo for f, lo in zip(fov, pad_low, strict=True)) if mirror else pad_low
        padded = tuple(n + lo + hi for n, lo, hi in zip(image_shape, pad_low, pad_high, strict=True))
        output = tuple(p - f + 1 for p, f in zip(padded, fov, strict=True))
        if any(o < 1 for o in output):
            raise DensePredError(
                f"image spatial shape {list(image_shape)} is smaller than the network's field of view "
                f"{list(fov)}; use --mirror (mirror=True) or an image at least that large"
            )
        if any(t < f for t, f in zip(input_tile, fov, strict=True)):
            raise DensePredError(f"tile shape {list(input_tile)} is smaller than the field of view {list(fov)}")
        origin = (0,) * len(fov)
        if roi is not None:
            roi = [tuple(r) for r in roi]
            if len(roi) != len(fov) or any(not 0 <= a < b <= o for (a, b), o in zip(roi, output, strict=True)):
                raise DensePredError(
                    f"region of interest {_roi_text(roi)} is invalid; it must lie within the dense output "
                    f"{_roi_text([(0, o) for o in output])}" + ("" if mirror else
                    f" (without mirroring, output voxel 0 is centred on image voxel {list(pad_low_for(fov))})"))
            origin = tuple(a for a, _ in roi)
            output = tuple(b - a for a, b in roi)
        tile = tuple(min(t - f + 1, o) for t, f, o in zip(input_tile, fov, output, strict=True))
        return cls(image_shape, fov, pad_low, pad_high, output, tile, origin)

    @property
    def input_tile(self) -> Shape:
        return tuple(t + f - 1 for t, f in zip(self.output_tile, self.fov, strict=True))

    @property
    def grid(self) -> Shape:
        return tuple(math.ceil(o / t) for o, t in zip(self.output_shape, self.output_tile, strict=True))

    def __len__(self) -> int:
        return math.prod(self.grid)

    def tiles(self) -> Iterator[Tile]:
        """Tiles in C order of their grid position; the last on each axis is shifted back."""
        for index in itertools.product(*(range(g) for g in self.grid)):
            yield self.tile_at(index)

    def tile_at(self, index: Sequence[int]) -> Tile:
        """The tile at grid position ``index``."""
        index = tuple(index)
        owned = tuple(i * t for i, t in zip(index, self.output_tile, strict=True))
        owned_shape = tuple(min(t, o - s) for t, o, s in zip(self.output_tile, self.output_shape, owned, strict=True))
        start = tuple(min(s, max(o - t, 0)) for s, o, t in zip(owned, self.output_shape, self.output_tile, strict=True))
        return Tile(index, start, self.output_tile, owned, owned_shape)

    def tile_of(self, tile_id: int) -> Tile:
        """The tile :meth:`tile_id` numbers ``tile_id``."""
        index = []
        for n in reversed(self.grid):
            tile_id, i = divmod(tile_id, n)
            index.append(i)
        return self.tile_at(index[::-1])

    def all_tiles(self) -> TileList:
        """Every tile, in C order of the grid, made one at a time as they are taken."""
        return TileList(self, [range(len(self))])

    def batches_to_run(self, done: Container[int], batch_size: int) -> TileList:
        """The tiles of every fixed batch (``batch_size`` tiles in C order) with a tile not in
        ``done``: a rerun batches the same tiles together, so its numbers are the same."""
        count = len(self)
        touched = {i // batch_size for i in done if 0 <= i < count}  # batches with a tile done
        finished = sorted(b for b in touched
                          if all(i in done for i in range(b * batch_size, min((b + 1) * batch_size, count))))
        ranges, start = [], 0
        for b in finished:  # the tiles between batches wholly done run
            ranges.append(range(start, b * batch_size))
            start = min((b + 1) * batch_size, count)
        ranges.append(range(start, count))
        return TileList(self, ranges)

    def tile_id(self, tile: Tile) -> int:
        """The tile's position in C order of the grid: a stable id for done records."""
        flat = 0
        for i, n in zip(tile.index, self.grid, strict=True):
            flat = flat * n + i
        return flat

    def source_window(self, tile: Tile) -> list[tuple[int, int, list[int] | None]]:
        """Per axis: the stored-image range ``[lo, hi)`` the tile's input window needs, and the
        indices into that range that mirror it (None where no mirroring is needed)."""
        origin = self.origin or (0,) * len(self.fov)
        return [
            source_window(o + start, length, low, n)
            for o, start, length, low, n in zip(origin, tile.output_start, self.input_tile, self.pad_low,
                                                self.image_shape, strict=True)
        ]


class TileList(Sequence[Tile]):
    """Tiles of a plan held as ranges of their ids: a few integers in memory however many tiles
    (a run of 10^7 tiles listed as :class:`Tile` objects took about 5 GB), each tile made when
    it is taken."""

    def __init__(self, plan: TilePlan, ranges: Sequence[range]):
        self.plan, self.ranges = plan, [r for r in ranges if len(r)]
        self._ends = list(itertools.accumulate(len(r) for r in self.ranges))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, slice):
            return [self[i] for i in range(*key.indices(len(self)))]
        if not -len(self) <= key < len(self):
            raise IndexError(f"tile {key} of {len(self)}")
        key %= len(self)
        part = bisect.bisect_right(self._ends, key)
        return self.plan.tile_of(self.ranges[part][key - (self._ends[part] - len(self.ranges[part]))])

    def __iter__(self) -> Iterator[Tile]:
        for ids in self.ranges:
            for tile_id in ids:
                yield self.plan.tile_of(tile_id)

    def voxels(self) -> int:
        """Output voxels the tiles own."""
        if len(self) == len(self.plan):
            return math.prod(self.plan.output_shape)
        return sum(math.prod(tile.owned_shape) for tile in self)


def pad_low_for(fov: Sequence[int]) -> Shape:
    """The low-side border: output voxel 0 is centred on this image voxel."""
    return tuple((f - 1) // 2 for f in fov)


def _roi_text(roi: Sequence[tuple[int, int]]) -> str:
    return ",".join(f"{a}:{b}" for a, b in roi)


def axis_starts(extent: int, tile: int) -> list[int]:
    """Start of each output tile along an axis; the last is shifted back to end at ``extent``."""
    starts = list(range(0, extent - tile, tile))
    starts.append(extent - tile)
    return starts


def reflect_index(i: int, n: int) -> int:
    """Index ``i`` of an axis of length ``n`` extended by reflection (NumPy ``reflect`` mode)."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    i %= period
    return i if i < n else period - i


def source_window(start: int, length: int, pad_low: int, n: int) -> tuple[int, int, list[int] | None]:
    """Stored range and mirror indices for padded positions ``[start, start + length)``."""
    lo, hi = start - pad_low, start - pad_low + length
    if lo >= 0 and hi <= n:
        return lo, hi, None
    indices = [reflect_index(i, n) for i in range(lo, hi)]
    first, last = min(indices), max(indices)
    return first, last + 1, [i - first for i in indices]

