"""Whole shards of densepred's outputs written in the writing thread are zarr-python's own bytes
for the same values; other writes and other stored forms are left to zarr."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, ZstdCodec

from densepred.io.arrays import ArraySpec
from densepred.io.outputs import OutputArray
from densepred.io.shard_files import ShardFiles, morton_order, shard_files

ZSTD = (ZstdCodec(level=0),)


def _pair(tmp_path, shape, dtype, chunks, shards, fill=0, compressors=ZSTD):
    return [zarr.create_array(str(tmp_path / name), shape=shape, dtype=dtype, chunks=chunks, shards=shards,
                              fill_value=fill, compressors=compressors).with_config({"write_empty_chunks": True})
            for name in ("zarr.zarr", "own.zarr")]


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("dtype", "shape", "chunks", "shards", "fill"), [
    ("uint8", (1, 37, 70, 45), (1, 8, 16, 16), (1, 16, 32, 32), 0),
    ("float32", (2, 19, 33, 40), (2, 5, 11, 8), (2, 10, 33, 16), 0.0),
    ("float16", (23, 30), (4, 5), (8, 10), 1.5),
    ("uint8", (3, 40, 40), (1, 20, 20), (1, 40, 40), 7),
])
def test_whole_shards_are_zarrs_own_bytes(tmp_path, dtype, shape, chunks, shards, fill):
    rng = np.random.default_rng(len(shape))
    reference, own = _pair(tmp_path, shape, dtype, chunks, shards, fill)
    values = (rng.random(shape) * 200).astype(dtype)
    values.flat[::7] = fill  # some inner chunks hold fill values, stored all the same
    writer = shard_files(own)
    assert writer is not None
    # the array in pieces of whole shards: a middle run of shards, then the rest up to the ends
    first = tuple(slice(0, min(s, n)) for s, n in zip(shards, shape, strict=True))
    rest = tuple(slice(min(s, n), n) for s, n in zip(shards, shape, strict=True))
    for box in (first, (*first[:-1], rest[-1]), tuple(slice(0, n) for n in shape)):
        if all(b.stop > b.start for b in box):
            assert writer.write(box, values[box])
            reference[box] = values[box]
    assert _files(tmp_path / "own.zarr") == _files(tmp_path / "zarr.zarr")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "own.zarr"), mode="r")[:], values)
    assert not list((tmp_path / "own.zarr").rglob("*.partial"))


@pytest.mark.parametrize("seed", [0, 1])
def test_shards_written_in_parts_of_whole_inner_chunks_are_zarrs_own_bytes(tmp_path, seed):
    shape, chunks, shards = (2, 27, 41, 30), (2, 4, 8, 6), (2, 12, 16, 18)
    reference, own = _pair(tmp_path, shape, "uint8", chunks, shards)
    rng = np.random.default_rng(seed)
    writer = shard_files(own)
    for _ in range(12):  # random boxes of whole inner chunks, some across shards, some written again
        box = [slice(None)]
        for n, c in zip(shape[1:], chunks[1:], strict=True):
            a = int(rng.integers(0, -(-n // c))) * c
            box.append(slice(a, min(n, a + c * int(rng.integers(1, 4)))))
        values = rng.integers(0, 255, [s.stop - s.start for s in box[1:]], dtype="uint8")[None].repeat(2, 0)
        assert writer.write(tuple(slice(*s.indices(n)) for s, n in zip(box, shape, strict=True)), values)
        reference[tuple(box)] = values
        assert _files(tmp_path / "own.zarr") == _files(tmp_path / "zarr.zarr")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "own.zarr"), mode="r")[:], reference[:])


@pytest.mark.parametrize("compressors", [ZSTD, None])
def test_whole_chunks_of_an_array_without_shards_are_zarrs_own_bytes(tmp_path, compressors):
    arrays = [zarr.create_array(str(tmp_path / name), shape=(3, 29, 50), dtype="float32", chunks=(3, 8, 16),
                                fill_value=0.5, compressors=compressors).with_config({"write_empty_chunks": True})
              for name in ("zarr.zarr", "own.zarr")]
    writer = shard_files(arrays[1])
    assert writer is not None
    rng = np.random.default_rng(2)
    for box in [(slice(0, 3), slice(8, 24), slice(16, 50)), (slice(0, 3), slice(24, 29), slice(0, 32)),
                (slice(0, 3), slice(8, 16), slice(16, 32))]:
        values = rng.normal(size=[s.stop - s.start for s in box]).astype("float32")
        assert writer.write(box, values)
        arrays[0][box] = values
        assert _files(tmp_path / "own.zarr") == _files(tmp_path / "zarr.zarr")
    assert not writer.write((slice(0, 3), slice(4, 12), slice(0, 16)), np.ones((3, 8, 16), "float32"))


def test_writes_off_the_inner_chunks_and_other_forms_are_zarrs(tmp_path):
    _, own = _pair(tmp_path, (30, 30), "uint8", (5, 5), (10, 10))
    writer = shard_files(own)
    assert not writer.write((slice(3, 15), slice(0, 10)), np.ones((12, 10), "uint8"))  # not on the inner grid
    assert not writer.write((slice(0, 10), slice(0, 10)), np.ones((10, 10), "float64"))  # another dtype
    assert not list((tmp_path / "own.zarr").rglob("c/*/*"))
    other = {
        "blosc": zarr.create_array(str(tmp_path / "b.zarr"), shape=(30, 30), dtype="uint8", chunks=(5, 5),
                                   shards=(10, 10), compressors=BloscCodec()).with_config({"write_empty_chunks": True}),
        "unsharded, empty chunks skipped": zarr.create_array(str(tmp_path / "u.zarr"), shape=(30, 30), dtype="uint8",
                                                             chunks=(5, 5)),
        "empty chunks skipped": zarr.create_array(str(tmp_path / "e.zarr"), shape=(30, 30), dtype="uint8",
                                                  chunks=(5, 5), shards=(10, 10)),
        "in memory": zarr.create_array(zarr.storage.MemoryStore(), shape=(30, 30), dtype="uint8", chunks=(5, 5),
                                       shards=(10, 10)).with_config({"write_empty_chunks": True}),
    }
    assert {name: shard_files(array) for name, array in other.items()} == dict.fromkeys(other)


def test_an_output_writes_whole_shards_itself_and_the_rest_through_zarr(tmp_path, monkeypatch):
    _reference, own = _pair(tmp_path, (2, 25, 36), "uint8", (2, 5, 6), (2, 10, 12))
    output = OutputArray(ArraySpec.parse(str(tmp_path / "own.zarr")), own)
    written = []
    monkeypatch.setattr(ShardFiles, "_put", staticmethod(lambda path, pieces: written.append(path)))
    values = np.random.default_rng(0).integers(0, 255, (2, 25, 36), dtype="uint8")
    for key in [(slice(None), slice(0, 10), slice(12, 24)), (slice(None), slice(3, 9), slice(0, 36))]:
        output[key] = values[key]
    assert [p.relative_to(tmp_path / "own.zarr").as_posix() for p in written] == ["c/0/0/1"]  # the first only
    assert np.array_equal(own[:, 3:9], values[:, 3:9])  # the second went through zarr


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_writes_of_whole_inner_chunks_are_zarrs_own_bytes(tmp_path_factory, data):
    dims = data.draw(st.integers(1, 3))
    shape = tuple(data.draw(st.integers(1, 20)) for _ in range(dims))
    inner = tuple(data.draw(st.integers(1, n)) for n in shape)
    shards = tuple(i * data.draw(st.integers(1, 3)) for i in inner)
    folder = tmp_path_factory.mktemp("w")
    reference, own = _pair(folder, shape, "uint16", inner, shards, fill=5)
    writer, rng = shard_files(own), np.random.default_rng(data.draw(st.integers(0, 2**16)))
    for _ in range(data.draw(st.integers(1, 4))):
        box = []
        for n, i in zip(shape, inner, strict=True):
            a = data.draw(st.integers(0, (n - 1) // i)) * i
            box.append(slice(a, min(n, a + i * data.draw(st.integers(1, 3)))))
        values = rng.integers(0, 9, [s.stop - s.start for s in box]).astype("uint16")  # some chunks all fill
        assert writer.write(tuple(box), values)
        reference[tuple(box)] = values
    assert _files(folder / "own.zarr") == _files(folder / "zarr.zarr")


@pytest.mark.parametrize("counts", [(1,), (7,), (2, 2, 2), (3, 5, 7), (4, 1, 8), (5, 3), (1, 1, 1), (2, 9, 3, 2)])
def test_a_shards_chunks_are_ordered_as_zarr_orders_them(counts):
    from zarr.core.indexing import morton_order_iter  # zarr's own, not public: here only to compare

    assert list(morton_order(counts)) == list(morton_order_iter(counts))
