"""Non-finite values: an input window with NaN or inf gives no prediction for its voxels.

Softmax of a NaN is NaN, which ``--dtype uint8`` would store as 0 and ``--argmax`` as class 0,
silently. Each tile's probabilities are checked over the box it owns (owned boxes partition
the output, so every voxel is counted once); the run ends with a warning that gives the count
and the first position in image coordinates, or, with ``strict``, stops at the first one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import DensePredError
from ...geometry import Tile
from ...geometry.memory import STREAM_SHARD
from ...io.encoding import Encoding

log = logging.getLogger("densepred")


@dataclass
class NonFinite:
    """Counts output voxels without a finite prediction; ``shift`` maps output to image voxels
    (with ``scale``, the output voxels per input voxel as ``(up, down)`` pairs: the image voxel
    that holds an output voxel's centre)."""

    shift: Sequence[int]
    strict: bool = False
    scale: Sequence[tuple[int, int]] = ()
    count: int = 0
    first: tuple[int, ...] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)  # the pipeline's writers check tiles at once

    def check(self, tile: Tile, probabilities: np.ndarray) -> None:
        """``probabilities`` is the tile's owned box, ``(K, *box)``."""
        self.check_box(tile.owned_start, probabilities)

    def check_box(self, start: Sequence[int], probabilities: np.ndarray) -> None:
        """``probabilities`` of the output box that starts at ``start``, ``(K, *box)``."""
        bad = ~np.isfinite(probabilities).all(axis=0)
        if not bad.any():
            return
        where = tuple(int(w + o + s) for w, o, s in zip(np.argwhere(bad)[0], start, self.shift, strict=True))
        if self.scale:
            where = tuple((2 * v + 1) * down // (2 * up) for v, (up, down) in zip(where, self.scale, strict=True))
        with self._lock:
            self.count += int(bad.sum())
            self.first = min(self.first or where, where)  # the first in C order, whichever writer saw it
        if self.strict:
            raise DensePredError(self.message())

    def message(self) -> str:
        return (f"{self.found()}; uint8 outputs store them as 0 and --argmax as class 0. Clean the input, or drop "
                "--strict to accept this")

    def found(self) -> str:
        position = ",".join(map(str, self.first or ()))
        return (f"{self.count} output voxel(s) have no finite prediction because their input window holds NaN "
                f"or inf (the first at image voxel {position})")

    def merge(self, count: int, first: tuple[int, ...] | None) -> None:
        """Add what another process (a cluster worker) counted."""
        if count:
            self.count += count
            self.first = self.first or first

    def report(self) -> None:
        if self.count:
            log.warning("%s", self.message().replace("drop --strict to accept this", "pass --strict to refuse it"))


@dataclass
class Sink:
    """An output with its encoding: each box written is checked for voxels without a finite
    prediction (``non_finite``), encoded, and made durable."""

    output: Any
    encoding: Encoding
    non_finite: NonFinite

    def write(self, box: Sequence[slice], values: np.ndarray) -> int:
        """Write ``values`` (``(K, *box)``) over the output ``box``; returns the voxels written."""
        self.put(box, self.encode(box, values))
        return int(np.prod(values.shape[1:]))

    def encode(self, box: Sequence[slice], values: np.ndarray) -> np.ndarray:
        """``values`` (``(K, *box)``) checked and encoded as the output stores them."""
        start = [s.start for s in box]
        if self.encoding.keeps(values):  # stored as they are: checked in one pass, no copy
            self.non_finite.check_box(start, values)
            return values
        return self._encoded(start, values)

    def put(self, box: Sequence[slice], encoded: np.ndarray) -> None:
        """Write encoded values over the output ``box`` and make them durable."""
        self.output.write_box(tuple(box), encoded, self.encoding.argmax)

    def _encoded(self, start: list[int], values: np.ndarray) -> np.ndarray:
        """Checked and encoded block by block of rows (the first spatial axis), each block's
        temporaries within a core's cache: on two cores the writers no longer stream a tile's
        floats through memory several times each (``benchmarks/pipeline_cores.py``)."""
        rows = max(1, BLOCK_VALUES // max(1, values[0, :1].size * values.shape[0]))
        shape = values.shape[1:] if self.encoding.argmax else (self.encoding.channels, *values.shape[1:])
        encoded = np.empty(shape, self.encoding.stored_dtype)
        for a in range(0, values.shape[1], rows):
            block = values[:, a:a + rows]
            self.non_finite.check_box([start[0] + a, *start[1:]], block)
            rows_of = (slice(a, a + rows),) if self.encoding.argmax else (slice(None), slice(a, a + rows))
            encoded[rows_of] = self.encoding(block)
        return encoded


BLOCK_VALUES = 1 << 18  # float32 values per block of Sink._encoded: 1 MiB, a core's L2 cache here


@dataclass
class StreamRows:
    """The slabs of streamed tiles, written in whole rows of the output's blocks.

    A stream's slab is a few output slices; a zarr shard or HDF5 chunk holds up to
    :data:`~densepred.geometry.memory.STREAM_SHARD` of them, and a write of part of one decodes
    and encodes the whole block again: once per slab (``benchmarks/file_outputs.py --modes
    mfp,stream``: a zarr output took 3.3x as long from a stream as from MFP tiles, HDF5 13x).
    Here a tile's slabs are encoded as they come and copied into a row of blocks (or up to the
    tile's end), which is written once full. A block row is what the memory estimate of a
    stream already holds per writer (its ``written`` shard); memory-mapped outputs are written
    as the slabs come. A slab may be a column of the tile's cross-section (see
    :func:`~densepred.running.compute.tiles.predict_tiles`): each column has its own row, and
    its slabs come from one writer thread, in order. A column's row buffer is reused from one
    row to the next: writes are done (encoded, compressed, stored) when ``write_box`` returns.
    """

    sink: Sink
    limit: int = STREAM_SHARD  # the longest block kept whole; longer ones (an older output's): slab by slab
    _rows: dict[Any, _Row] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.lead = (slice(None),) * (0 if self.sink.encoding.argmax else 1)  # axes before the stream's
        length = self.sink.output.block_length(len(self.lead))
        self.length = length if length is not None and length <= self.limit else None

    def write(self, tile: Any, box: tuple[slice, ...], values: np.ndarray, last: bool) -> int:
        """Take slab ``values`` (``(K, *box)``) of ``tile``, ``last`` where it ends the tile's
        rows (in its column); returns the voxels taken."""
        if self.length is None:
            return self.sink.write(box, values)
        encoded = self.sink.encode(box, values)
        column = (tile, *(s.start for s in box[1:]))
        with self._lock:
            row = self._rows.get(column)
        if row is None:
            shape = (*encoded.shape[:len(self.lead)], self.length, *encoded.shape[len(self.lead) + 1:])
            row = _Row(box[1:], np.empty(shape, encoded.dtype), box[0].start)
            with self._lock:
                self._rows[column] = row
        taken, rows = 0, box[0].stop - box[0].start
        while taken < rows:
            end = (row.start // self.length + 1) * self.length  # the end of the block row
            take = min(rows - taken, end - row.start - row.filled)
            row.buffer[(*self.lead, slice(row.filled, row.filled + take))] = encoded[(*self.lead,
                                                                                     slice(taken, taken + take))]
            row.filled, taken = row.filled + take, taken + take
            if row.start + row.filled == end:
                self._put(row)
        if last:
            if row.filled:
                self._put(row)
            with self._lock:
                del self._rows[column]
        return int(np.prod(values.shape[1:]))

    def _put(self, row: _Row) -> None:
        """Write the rows kept and start the next block row."""
        self.sink.put((slice(row.start, row.start + row.filled), *row.cross),
                      row.buffer[(*self.lead, slice(0, row.filled))])
        row.start, row.filled = row.start + row.filled, 0


@dataclass
class _Row:
    """A column's rows kept in ``buffer`` (one block row long): ``filled`` rows from ``start``."""

    cross: tuple[slice, ...]
    buffer: np.ndarray
    start: int
    filled: int = 0


def tile_writes(sink: Sink, tile_id: Callable[[Tile], int], done: Container[int]) -> Callable[..., int]:
    """The ``write`` that :func:`~densepred.running.compute.tiles.predict_tiles` calls for an own
    net's tiles: a whole tile over the output box it owns, a streamed tile's slabs through
    :class:`StreamRows`. A tile in ``done`` is durable already (recomputed only because its
    batch has a missing tile) and is not written again. It returns the voxels written."""
    rows = StreamRows(sink)

    def write(tile: Tile, probabilities: np.ndarray, part: tuple[slice, ...] | None, last: bool) -> int:
        key = tile_id(tile)
        if key in done:
            return 0
        if part is None:
            return sink.write(tile.owned_slices(), probabilities)
        return rows.write(key, part, probabilities, last)

    return write
