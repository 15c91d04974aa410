"""A stream's slabs written in whole rows of the output's blocks (``StreamRows``): every write
but a tile's last covers whole blocks along the stream, the values are the slabs', and outputs
without blocks (memory maps) and blocks longer than a stream's shard take the slabs as they come."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from densepred.io.encoding import Encoding
from densepred.running.compute.sink import NonFinite, Sink, StreamRows


class Blocks:
    """An output stored in blocks of ``length`` rows, recording the boxes written."""

    def __init__(self, shape, length):
        self.values, self.length, self.boxes = np.zeros(shape, np.float32), length, []

    def block_length(self, axis):
        return self.length

    def write_box(self, box, values, labels):
        self.boxes.append((box[0].start, box[0].stop))
        self.values[(slice(None), *box) if not labels else box] = values


def slabs(start, stop, sizes):
    """``(start, stop)`` row ranges of slabs of the given sizes (repeated) from start to stop."""
    a, i = start, 0
    while a < stop:
        b = min(a + sizes[i % len(sizes)], stop)
        yield a, b
        a, i = b, i + 1


@pytest.mark.parametrize(("length", "limit"), [(8, 64), (5, 64), (64, 32), (None, 64)])
def test_slabs_of_odd_sizes_are_written_in_whole_block_rows_and_equal_the_values(length, limit):
    rng = np.random.default_rng(4)
    shape = (3, 41, 9, 7)
    values = rng.random(shape, dtype=np.float32)
    output = Blocks(shape, length)
    rows = StreamRows(Sink(output, Encoding(3), NonFinite((0, 0, 0))), limit)
    tiles = [(0, 24), (24, 41)]  # two tiles along the stream, their slabs from one writer each, in order
    for tile, (start, stop) in enumerate(tiles):
        pieces = list(slabs(start, stop, [3, 7, 2]))
        for a, b in pieces:
            box = (slice(a, b), slice(0, 9), slice(0, 7))
            assert rows.write(tile, box, values[:, a:b], (a, b) == pieces[-1]) == (b - a) * 63
    np.testing.assert_array_equal(output.values, values)
    kept = length if length is not None and length <= limit else None
    if kept is None:  # written as they come
        assert len(output.boxes) == len(list(slabs(0, 24, [3, 7, 2]))) + len(list(slabs(24, 41, [3, 7, 2])))
    else:
        ends = {stop for _, stop in tiles}
        assert all(b % kept == 0 or b in ends for _, b in output.boxes)
        assert all(a % kept == 0 or a in {start for start, _ in tiles} for a, _ in output.boxes)


def test_labels_are_gathered_along_their_first_axis():
    values = np.random.default_rng(5).random((2, 19, 4, 4), dtype=np.float32)
    output = SimpleNamespace(boxes=[], stored=np.zeros((19, 4, 4), np.uint8), block_length=lambda axis: 8)

    def write_box(box, encoded, labels):
        output.boxes.append(box[0])
        output.stored[box] = encoded

    output.write_box = write_box
    rows = StreamRows(Sink(output, Encoding(2, argmax=True), NonFinite((0, 0, 0))), 64)
    for a, b in ((0, 3), (3, 10), (10, 17), (17, 19)):
        rows.write("tile", (slice(a, b), slice(0, 4), slice(0, 4)), values[:, a:b], b == 19)
    assert [(s.start, s.stop) for s in output.boxes] == [(0, 8), (8, 16), (16, 19)]
    np.testing.assert_array_equal(output.stored, values.argmax(axis=0))
