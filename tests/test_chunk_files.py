"""Boxes of local zarr arrays read from their chunk files equal zarr's own reads, for every stored
form read that way; other forms are left to zarr; a corrupt chunk still names itself."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numcodecs import GZip, Zstd
from numcodecs.blosc import Blosc
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ShardingCodec, TransposeCodec, ZstdCodec

from densepred.errors import DensePredError
from densepred.io.chunk_files import chunk_files
from densepred.io.reading import read_box

SHAPE = (23, 37, 29)  # odd sizes: every axis ends in a partial chunk


def _values(dtype: str, rng: np.random.Generator) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return rng.normal(0, 100, SHAPE).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, SHAPE, endpoint=True).astype(dtype)


def _v3(path, dtype, compressor=None, **options):
    compressors = () if compressor is None else (compressor,)
    return zarr.create_array(path, shape=SHAPE, dtype=dtype, compressors=compressors, **options)


V3 = {
    "zstd": lambda p: _v3(p, "uint8", ZstdCodec(level=3), chunks=(8, 8, 8)),
    "zstd checksum": lambda p: _v3(p, "float32", ZstdCodec(level=1, checksum=True), chunks=(5, 16, 7)),
    "gzip": lambda p: _v3(p, "int16", GzipCodec(level=5), chunks=(8, 9, 10)),
    "blosc": lambda p: _v3(p, "uint16", BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), chunks=(16, 16, 16)),
    "none": lambda p: _v3(p, "float64", chunks=(7, 7, 7)),
    "big endian": lambda p: _v3(p, ">u2", ZstdCodec(), chunks=(8, 8, 8), serializer=BytesCodec(endian="big")),
    "dot keys": lambda p: _v3(p, "uint8", ZstdCodec(), chunks=(8, 8, 8),
                              chunk_key_encoding={"name": "default", "separator": "."}),
    "v2 keys": lambda p: _v3(p, "int8", ZstdCodec(), chunks=(8, 8, 8),
                             chunk_key_encoding={"name": "v2", "separator": "/"}),
    "sharded": lambda p: _v3(p, "uint8", ZstdCodec(), chunks=(4, 8, 8), shards=(8, 16, 16)),
    "sharded uint16": lambda p: _v3(p, "uint16", BloscCodec(), chunks=(3, 5, 5), shards=(6, 15, 10)),
    "sharded index first": lambda p: zarr.create(SHAPE, chunks=(8, 16, 16), dtype="uint8", zarr_format=3, store=p,
                                                 codecs=[ShardingCodec(chunk_shape=(4, 8, 8),
                                                                       codecs=[BytesCodec(), GzipCodec()],
                                                                       index_codecs=[BytesCodec(), Crc32cCodec()],
                                                                       index_location="start")]),
    "sharded no checksum": lambda p: zarr.create(SHAPE, chunks=(8, 16, 16), dtype="float32", zarr_format=3,
                                                 store=p, codecs=[ShardingCodec(chunk_shape=(4, 8, 8),
                                                                                index_codecs=[BytesCodec()])]),
}
V2 = {
    "v2 blosc": {"dtype": "uint8", "chunks": (8, 8, 8), "compressor": Blosc()},
    "v2 zstd slash": {"dtype": "float32", "chunks": (6, 10, 7), "compressor": Zstd(), "dimension_separator": "/"},
    "v2 gzip big endian": {"dtype": ">u2", "chunks": (8, 8, 8), "compressor": GZip()},
    "v2 raw": {"dtype": "int32", "chunks": (9, 9, 9), "compressor": None},
}
BOXES = [(slice(None),) * 3, (slice(3, 20), slice(1, 36), slice(9, 10)), (slice(22, 23), slice(0, 37), slice(5, 28)),
         (slice(7, 8), slice(30, 31), slice(28, 29)), (slice(0, 5),)]


def _make(tmp_path, name):
    if name in V3:
        return V3[name](str(tmp_path / "a.zarr"))
    options = dict(V2[name])
    return zarr.create(SHAPE, store=str(tmp_path / "a.zarr"), zarr_format=2, **options)


@pytest.mark.parametrize("name", [*V3, *V2])
def test_boxes_from_chunk_files_equal_zarrs_reads(tmp_path, name):
    rng = np.random.default_rng(len(name))
    array = _make(tmp_path, name)
    values = _values(str(array.dtype), rng)
    array[:] = values
    # some chunks (or shards, or inner chunks) never written: their fill value
    array[:8, :8, :8] = np.zeros((8, 8, 8), array.dtype)
    files = chunk_files(zarr.open_array(str(tmp_path / "a.zarr"), mode="r"))
    assert files is not None, name
    reopened = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")
    for box in BOXES + [tuple(_random_slice(rng, n) for n in SHAPE) for _ in range(6)]:
        got = read_box(reopened, box)
        want = reopened[box]
        assert got.dtype == want.dtype
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_chunks_and_shards_not_stored_read_as_zarr_gives_them(tmp_path):
    array = _v3(str(tmp_path / "a.zarr"), "int16", ZstdCodec(), chunks=(4, 8, 8), shards=(8, 16, 16), fill_value=-7)
    array[9:14, 20:30, 3:11] = np.arange(400, dtype="int16").reshape(5, 10, 8)  # a few inner chunks of a few shards
    plain = _v3(str(tmp_path / "b.zarr"), "float32", None, chunks=(8, 8, 8), fill_value=2.5)
    plain[0:3, 0:3, 0:3] = 1.0
    for stored in (array, plain):
        reopened = zarr.open_array(stored.store_path.store.root, mode="r")
        assert chunk_files(reopened) is not None
        np.testing.assert_array_equal(read_box(reopened, (slice(None),) * 3), reopened[:])


def test_other_stored_forms_are_left_to_zarr(tmp_path):
    transposed = zarr.create(SHAPE, chunks=(8, 8, 8), dtype="uint8", zarr_format=3, store=str(tmp_path / "t.zarr"),
                             codecs=[TransposeCodec(order=(2, 1, 0)), BytesCodec()])
    filtered = zarr.create(SHAPE, chunks=(8, 8, 8), dtype="float32", zarr_format=2, store=str(tmp_path / "f.zarr"),
                           filters=[Zstd()])
    fortran = zarr.create(SHAPE, chunks=(8, 8, 8), dtype="uint8", zarr_format=2, store=str(tmp_path / "o.zarr"),
                          order="F")
    in_memory = zarr.create_array(zarr.storage.MemoryStore(), shape=SHAPE, chunks=(8, 8, 8), dtype="uint8")
    rng = np.random.default_rng(3)
    for array in (transposed, filtered, fortran, in_memory):
        values = _values(str(array.dtype), rng)
        array[:] = values
        assert chunk_files(array) is None
        np.testing.assert_array_equal(read_box(array, (slice(2, 19), slice(None), slice(4, 5))),
                                      values[2:19, :, 4:5])
    assert chunk_files(values) is None


@pytest.mark.parametrize("sharded", [False, True])
def test_a_corrupt_chunk_is_one_line_that_names_it(tmp_path, sharded):
    options = {"chunks": (4, 8, 8), "shards": (8, 16, 16)} if sharded else {"chunks": (8, 16, 16)}
    array = _v3(str(tmp_path / "a.zarr"), "uint8", ZstdCodec(), **options)
    array[:] = _values("uint8", np.random.default_rng(5))
    path = tmp_path / "a.zarr" / "c" / "1" / "0" / "1"
    data = bytearray(path.read_bytes())
    data[len(data) // 2:] = b"\x17" * (len(data) - len(data) // 2)  # the second half of the file is garbage
    path.write_bytes(bytes(data))
    reopened = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")
    with pytest.raises(DensePredError, match=r"chunk \[1, 0, 1\] of .*a\.zarr .*is unreadable"):
        read_box(reopened, (slice(None),) * 3)
    np.testing.assert_array_equal(read_box(reopened, (slice(0, 8),)), array[0:8])  # the rest still reads


def _random_slice(rng: np.random.Generator, n: int) -> slice:
    a = int(rng.integers(0, n))
    return slice(a, int(rng.integers(a + 1, n + 1)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_shape_chunking_and_box_reads_as_zarr_reads(tmp_path_factory, data):
    dims = data.draw(st.integers(1, 3))
    shape = tuple(data.draw(st.integers(1, 23)) for _ in range(dims))
    inner = tuple(data.draw(st.integers(1, n)) for n in shape)
    sharded = data.draw(st.booleans())
    shards = tuple(i * data.draw(st.integers(1, 3)) for i in inner) if sharded else None
    path = tmp_path_factory.mktemp("h") / "a.zarr"
    array = zarr.create_array(str(path), shape=shape, dtype="int16", chunks=inner, shards=shards, fill_value=-3)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    values = rng.integers(-1000, 1000, shape).astype("int16")
    cut = tuple(slice(0, data.draw(st.integers(0, n))) for n in shape)
    array[cut] = values[cut]  # the rest never written: the fill value
    box = tuple(_random_slice(rng, n) for n in shape)
    reopened = zarr.open_array(str(path), mode="r")
    assert chunk_files(reopened) is not None
    np.testing.assert_array_equal(read_box(reopened, box), reopened[box])
