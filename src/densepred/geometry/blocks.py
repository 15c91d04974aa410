"""Blocks: the units of work a cluster runs, each a whole number of output tiles (shards).

A block owns a box of the output made of ``tiles_per_block`` tiles on every axis, on the
*write* grid (block ``i`` starts at ``i * block``), so no two blocks ever write one shard;
it reads its own input window (the block plus the network border, ``FOV - 1``) from
storage. Block ids are C-order positions on that grid: deterministic, so a rerun finds the
same blocks. Totals are computed per axis, never by listing blocks, so a petavoxel plan is
instant::

    output   |<-- block 0 -->|<-- block 1 -->|<-- 2 -->|
    read     |<-- block 0 + FOV - 1 -->|
                             |<-- block 1 + FOV - 1 -->|
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

Shape = tuple[int, ...]


@dataclass(frozen=True)
class BlockPlan:
    """Blocks of ``block`` output voxels (a multiple of ``tile``) over an output of ``output_shape``.

    Example:
        >>> plan = BlockPlan.create((100, 1000, 1000), tile=(20, 100, 100), tiles_per_block=(2, 4, 4), fov=(9, 9, 9))
        >>> plan.block, plan.grid, len(plan)
        ((40, 400, 400), (3, 3, 3), 27)
        >>> plan.input_voxels() - math.prod(plan.output_shape)
        30023424
    """

    output_shape: Shape
    tile: Shape
    block: Shape
    fov: Shape

    @classmethod
    def create(cls, output_shape: Sequence[int], tile: Sequence[int], tiles_per_block: Sequence[int],
               fov: Sequence[int]) -> BlockPlan:
        output_shape, tile, fov = tuple(output_shape), tuple(tile), tuple(fov)
        block = tuple(min(t * n, o) for t, n, o in zip(tile, tiles_per_block, output_shape, strict=True))
        return cls(output_shape, tile, block, fov)

    @property
    def grid(self) -> Shape:
        return tuple(math.ceil(o / b) for o, b in zip(self.output_shape, self.block, strict=True))

    def __len__(self) -> int:
        return math.prod(self.grid)

    def boxes(self) -> Iterator[tuple[int, tuple[tuple[int, int], ...]]]:
        """``(block id, ((start, stop), ...))`` of every block's output box, in C order."""
        for block_id, index in enumerate(itertools.product(*(range(g) for g in self.grid))):
            yield block_id, tuple((i * b, min((i + 1) * b, o))
                                  for i, b, o in zip(index, self.block, self.output_shape, strict=True))

    def box(self, block_id: int) -> tuple[tuple[int, int], ...]:
        """Block ``block_id``'s output box."""
        return tuple((i * b, min((i + 1) * b, o))
                     for i, b, o in zip(self.block_index(block_id), self.block, self.output_shape, strict=True))

    def block_index(self, block_id: int) -> Shape:
        """The grid position of block ``block_id`` (C order)."""
        index = []
        for n in reversed(self.grid):
            block_id, i = divmod(block_id, n)
            index.append(i)
        return tuple(reversed(index))

    def tile_indices(self, block_id: int) -> list[Shape]:
        """Grid positions of the output tiles block ``block_id`` owns, in C order.

        Example:
            >>> plan = BlockPlan.create((10, 10), tile=(4, 4), tiles_per_block=(2, 2), fov=(3, 3))
            >>> plan.grid, plan.tile_indices(3)
            ((2, 2), [(2, 2)])
        """
        per_block = [math.ceil(b / t) for b, t in zip(self.block, self.tile, strict=True)]
        tiles = [math.ceil(o / t) for o, t in zip(self.output_shape, self.tile, strict=True)]
        ranges = [range(i * n, min((i + 1) * n, g))
                  for i, n, g in zip(self.block_index(block_id), per_block, tiles, strict=True)]
        return list(itertools.product(*ranges))

    def tile_ids(self, block_id: int) -> list[int]:
        """C-order ids, on the grid of tiles (which does not depend on the block size), of the
        tiles block ``block_id`` owns: what a record names, so a resume may change the block size.

        Example:
            >>> plan = BlockPlan.create((10, 10), tile=(4, 4), tiles_per_block=(2, 2), fov=(3, 3))
            >>> plan.tile_ids(0), plan.tile_ids(3)
            ([0, 1, 3, 4], [8])
        """
        tiles = self.tile_grid
        return [sum(i * math.prod(tiles[a + 1:]) for a, i in enumerate(index))
                for index in self.tile_indices(block_id)]

    @property
    def tile_grid(self) -> Shape:
        """Tiles per axis."""
        return tuple(math.ceil(o / t) for o, t in zip(self.output_shape, self.tile, strict=True))

    def input_voxels(self) -> int:
        """Input voxels all blocks read together, halos included (each block reads its own)."""
        return math.prod(o + g * (f - 1) for o, g, f in zip(self.output_shape, self.grid, self.fov, strict=True))

    def read_amplification(self) -> float:
        """Input voxels read per output voxel: 1 plus the halo each block reads again."""
        return self.input_voxels() / math.prod(self.output_shape)


def columns(box: Sequence[tuple[int, int]], unit: Sequence[int], count: int) -> list[tuple[tuple[int, int], ...]]:
    """``box`` cut into at most ``count`` columns, side by side across its first axis: along the
    first other axis with room for ``count`` (else the one with the most room) in units of
    storage (``unit``: a shard's or chunk's shape). Cuts fall on multiples of the unit, so no
    unit is split between columns, and the columns hold as nearly equal numbers of units as the
    cuts allow. A stream's slab is cut so that several writers share it, each its own shards.

    Example:
        >>> columns(((0, 8), (0, 1000), (0, 900)), unit=(64, 256, 128), count=2)
        [((0, 8), (0, 512), (0, 900)), ((0, 8), (512, 1000), (0, 900))]
        >>> columns(((0, 8), (40, 200)), unit=(64, 256), count=4)  # inside one unit: not cut
        [((0, 8), (40, 200))]
    """
    box = tuple((int(a), int(b)) for a, b in box)
    cuts = [list(range((a // u + 1) * u, b, u)) for (a, b), u in zip(box[1:], unit[1:], strict=True)]
    if count < 2 or not any(cuts):
        return [box]
    most = max(range(len(cuts)), key=lambda i: len(cuts[i]))
    axis = next((i for i, c in enumerate(cuts) if len(c) >= count - 1), most)
    start, stop = box[axis + 1]
    edges = [start, *cuts[axis], stop]
    pieces = min(count, len(edges) - 1)
    chosen = [edges[round(i * (len(edges) - 1) / pieces)] for i in range(pieces + 1)]
    return [tuple((a, b) if i != axis + 1 else (lo, hi) for i, (a, b) in enumerate(box))
            for lo, hi in itertools.pairwise(chosen)]
