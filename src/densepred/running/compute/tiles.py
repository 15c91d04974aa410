"""Own nets' tiles through the read/compute/write pipeline (``predict_tiles``), and the engine for a tile.

Input values are scaled as :mod:`densepred.io.images` says (integers by their dtype's maximum).
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ...geometry import STREAM_SLAB, Tile, TileList, TilePlan, columns
from ...geometry.memory import STREAM_SHARD
from ...io import ChannelFirst, WindowRows, read_window
from ...networks import DenseEngine, DenseNet, StackEngine
from ...networks.precision import FLOAT32, Precision
from ...pipeline import run_pipeline
from ...progress import Progress, ProgressOption
from .transfers import Download, Transfers, Upload

log = logging.getLogger("densepred")

# write(tile, probabilities, part, last): part None = the tile's whole owned box (see predict_tiles)
TileWriter = Callable[[Tile, np.ndarray, "tuple[slice, ...] | None", bool], None]


def predict_tiles(engine: DenseEngine, source: ChannelFirst, plan: TilePlan, tiles: Sequence[Tile],
                  write: TileWriter, *, batch_size: int = 1, progress: ProgressOption = False,
                  prefetch: int = 2, pending: int = 2, writers: int = 1, stream_unit: Sequence[int] | None = None,
                  finished: Callable[[Tile], None] | None = None) -> None:
    """Compute ``tiles`` in batches of ``batch_size`` and hand each tile's probabilities, cropped to
    the box it owns, to ``write(tile, probabilities, part, last)`` in a background thread;
    ``finished(tile)`` follows once every write of the tile has returned.

    ``part`` is None for the whole owned box (``tile.owned_slices()``). The stream engine hands
    a tile over in slabs instead: ``part`` is each slab's box in the output, and ``last`` is
    True with the slab that ends the tile's rows. With ``stream_unit`` (the spatial shape of
    the output's units of storage: shards, chunks) each slab is also cut
    into columns of whole units (:func:`~densepred.geometry.columns`), one per writer, so the
    writers share a stream's work; ``last`` then ends a column. Tiles are batched in the order
    given; a caller that needs identical numbers on a rerun passes the same batches (see
    :mod:`densepred.running.jobs.own_job`).

    ``writers`` threads call ``write``, each tile's (column's) calls from one thread: more than
    one only where no two tiles share a unit of storage (an output whose shards or chunks are
    the tiles, a memory map, an array in memory), since a shard written from two threads at
    once loses one of the writes.
    """
    voxels = tiles.voxels() if isinstance(tiles, TileList) else sum(math.prod(t.owned_shape) for t in tiles)
    bar = Progress(voxels, f"predict ({engine.mode})", progress, terminal=True)
    transfers = Transfers(engine.device)
    finished = finished or (lambda tile: None)
    try:
        if isinstance(engine, DenseEngine) and engine.mode == "stream":
            split = Columns(stream_unit, writers, finished)
            _stream_tiles(engine, source, plan, tiles, write, bar, transfers, prefetch, pending, writers, split)
            return
        batches = _batches(tiles, batch_size)  # made as they are read

        def read(batch: list[Tile]) -> Upload:
            return transfers.upload(np.stack([read_window(source, plan, tile) for tile in batch]))

        def compute(windows: Upload) -> Download:
            bar.poll()
            return transfers.download(engine(transfers.take(windows)), probabilities)

        def write_batch(batch: list[Tile], result: Download) -> None:
            for tile, tile_probs in zip(batch, result.numpy(), strict=True):
                write(tile, tile_probs[(slice(None), *tile.owned_in_tile())], None, True)
                finished(tile)
                bar.update(math.prod(tile.owned_shape))

        run_pipeline(batches, read, compute, write_batch, prefetch=prefetch, pending=pending, writers=writers)
    finally:
        bar.close()


def _batches(tiles: Iterable[Tile], size: int) -> Iterator[list[Tile]]:
    """``size`` tiles at a time, in order (the last batch may be shorter)."""
    taken = iter(tiles)
    while batch := list(itertools.islice(taken, size)):
        yield batch


class Columns:
    """The columns a streamed tile's slabs are cut into, one per writer (a single column without
    a ``unit``), and the columns still to end per tile: ``finished(tile)`` is called by the
    writer that ends its last one."""

    def __init__(self, unit: Sequence[int] | None, writers: int, finished: Callable[[Tile], None]):
        self.unit, self.count, self.finished = unit, writers if unit is not None else 1, finished
        self._of: tuple[Tile | None, list[tuple[slice, ...]]] = (None, [])
        self._left: dict[Any, int] = {}  # by tile index
        self._lock = threading.Lock()

    def of(self, tile: Tile) -> list[tuple[slice, ...]]:
        """The cross-sections of ``tile``'s columns, in the tile's own output (as ``owned_in_tile``)."""
        if self._of[0] is not tile:
            owned = [(s.start, s.stop) for s in tile.owned_slices()]  # in the output: units lie on its grid
            cut = columns(owned, self.unit, self.count) if self.unit is not None else [tuple(owned)]
            start = tile.output_start[1:]
            self._of = (tile, [tuple(slice(a - o, b - o) for (a, b), o in zip(c[1:], start, strict=True)) for c in cut])
        return self._of[1]

    def ended(self, tile: Tile, count: int) -> None:
        """One of ``tile``'s ``count`` columns has ended (from a writer thread)."""
        with self._lock:
            left = self._left.get(tile.index, count) - 1
            if left:
                self._left[tile.index] = left
            else:
                self._left.pop(tile.index, None)
        if not left:
            self.finished(tile)


def _stream_tiles(engine: DenseEngine, source: ChannelFirst, plan: TilePlan, tiles: Sequence[Tile],
                  write: TileWriter, bar: Progress, transfers: Transfers, prefetch: int, pending: int,
                  writers: int, split: Columns) -> None:
    """``mode="stream"``: each tile read, computed and written slab by slab along its first axis,
    so memory depends on the slab and the cross-section, not on the tile's length."""
    length = plan.input_tile[0]
    slabs = ((tile, a, min(a + STREAM_SLAB, length)) for tile in tiles for a in range(0, length, STREAM_SLAB))
    current: dict[str, Any] = {"tile": None}
    windows = WindowRows(source, plan, STREAM_SHARD)  # whole chunk rows read at once, not once per slab

    def read(slab: tuple[Tile, int, int]) -> tuple[Tile, Upload]:
        tile, a, b = slab
        return tile, transfers.upload(windows.read(tile, a, b)[None])

    def compute(item: tuple[Tile, Upload]) -> tuple[int, Download | None]:
        bar.poll()
        tile, data = item
        if current["tile"] is not tile:
            current.update(tile=tile, push=engine.stream(), made=0)
        logits = current["push"](transfers.take(data))
        first = current["made"]
        if logits is None:
            return first, None
        current["made"] += logits.shape[2]
        # a fresh tensor: the stream's buffers hold only its ops' inputs
        return first, transfers.download(logits, probabilities)

    def parts(slab: tuple[Tile, int, int], result: tuple[int, Download | None]) -> list[tuple[Any, Any]]:
        """The slab's owned rows, one part per column (nothing is waited for or finished here)."""
        tile, (first, down) = slab[0], result
        if down is None:
            return []
        rows = tile.owned_in_tile()[0]
        lo, hi = max(first, rows.start), min(first + down.tensor.shape[2], rows.stop)
        if lo >= hi:
            return []
        cut = split.of(tile)
        return [((tile, lo, hi, cross, len(cut)), down.part((slice(0, 1), slice(None), slice(lo - first, hi - first),
                                                               *cross))) for cross in cut]

    def write_column(part: tuple[Tile, int, int, tuple[slice, ...], int], down: Download) -> None:
        tile, lo, hi, cross, count = part
        values = down.numpy()[0]
        box = (slice(tile.output_start[0] + lo, tile.output_start[0] + hi),
               *(slice(o + c.start, o + c.stop) for o, c in zip(tile.output_start[1:], cross, strict=True)))
        last = hi == tile.owned_in_tile()[0].stop
        write(tile, values, box, last)
        bar.update(values[0].size)
        if last:
            split.ended(tile, count)

    # a tile's slabs rewrite its shards: each column of a tile is taken by one writer, in order
    run_pipeline(slabs, read, compute, write_column, prefetch=prefetch, pending=pending, writers=writers,
                 writer_of=lambda slab: slab[0].index, parts=parts)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax in float32, whatever the engine computed in, C-ordered ``(B, K, *box)``: each
    class's map contiguous for the writer (the CPU engines' channels-last logits are reordered
    first, which also makes the softmax itself faster there). A tile's finish, run on the
    device before the copy down on CUDA and in a writer thread on the CPU (:mod:`.transfers`)."""
    return torch.softmax(logits.float().contiguous(), dim=1)


def make_engine(net: DenseNet, mode: str, device: torch.device, stacked: bool,
                precision: Precision | str = FLOAT32) -> DenseEngine | StackEngine:
    """The dense engine for a tile: the net's own, or run over the slices of a stack."""
    engine = DenseEngine(net, mode, device, precision)
    return StackEngine(engine) if stacked else engine
