"""HDF5 outputs compressed by the writers (``io/hdf5_chunks.py``): the chunks a box covers are
stored as HDF5's shuffle and deflate filters would store them, so h5py reads back every value;
the parts of chunks a box covers go through h5py, and datasets with other filters too."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

from densepred.interfaces.cli import main
from densepred.io.encoding import Encoding
from densepred.io.hdf5_chunks import DirectChunks
from densepred.io.outputs import h5_chunk_shape
from densepred.running import PredictJob
from densepred.running.jobs.layout import file_chunks
from tests.test_predict_files import in_memory, predict
from tests.test_reliability_files import one_error_line


@pytest.fixture
def volume(tmp_path):
    data = np.random.default_rng(7).random((13, 47, 39), dtype=np.float32)
    np.save(tmp_path / "in.npy", data)
    return data


def dataset(path, shape, dtype, chunks, **filters):
    f = h5py.File(path, "w")
    options = filters or {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    return f, f.create_dataset("p", shape=shape, dtype=dtype, chunks=chunks, fillvalue=0, **options)


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8", "uint16"])
def test_whole_chunks_and_parts_of_chunks_read_back_as_written(tmp_path, dtype):
    rng = np.random.default_rng(3)
    shape, chunks = (2, 13, 29, 19), (2, 4, 8, 8)
    values = (rng.random(shape) * 250).astype(dtype)
    f, array = dataset(tmp_path / "o.h5", shape, dtype, chunks)
    direct = DirectChunks.of(array)
    assert not direct.write((slice(None), 3, slice(0, 8), slice(0, 8)), values[:, 3, :8, :8])  # h5py's
    assert not direct.write((slice(None), slice(0, 4, 2), slice(0, 8), slice(0, 8)), values[:, :4:2, :8, :8])
    assert array.id.get_num_chunks() == 0
    for z in range(0, 13, 8):  # boxes of 2 x 2 x 3 chunks, clipped at the edges (13, 29, 19)
        for y in range(0, 29, 16):
            for x in range(0, 19, 24):
                box = (slice(None), slice(z, z + 8), slice(y, y + 16), slice(x, x + 24))
                assert direct.write(box, values[box])
    assert array.id.get_num_chunks() == 4 * 4 * 3
    partial = (slice(None), slice(3, 11), slice(5, 21), slice(2, 19))  # whole chunks inside, parts around them
    values[partial] = (rng.random(values[partial].shape) * 250).astype(dtype)
    assert direct.write(partial, values[partial])
    f.close()
    with h5py.File(tmp_path / "o.h5", "r") as f:
        np.testing.assert_array_equal(f["p"][...], values)


def test_a_dataset_with_other_filters_is_written_by_h5py(tmp_path):
    f, array = dataset(tmp_path / "o.h5", (5, 6), "float32", (2, 3), compression="gzip", fletcher32=True)
    assert DirectChunks.of(array) is None
    f.close()


@pytest.mark.parametrize("extra", [(), ("--dtype", "uint8", "--classes", "0,2"), ("--mode", "stream")])
def test_a_predicted_hdf5_output_is_the_in_memory_prediction(config, volume, tmp_path, extra, monkeypatch):
    expected = in_memory(config, volume)
    encoded, encode = [], DirectChunks.encode
    monkeypatch.setattr(DirectChunks, "encode", lambda self, block: encoded.append(block.shape) or encode(self, block))
    arguments = [a for a in extra if a not in ("--mode", "stream")]
    if "stream" in extra:  # a stream's slabs are gathered into whole rows of chunks (StreamRows)
        assert main(["predict", str(config), "--input", str(tmp_path / "in.npy"), "--output",
                     f"{tmp_path / 'o.h5'}:p", "--mode", "stream", "--quiet"]) == 0
    else:
        assert predict(config, tmp_path, f"{tmp_path / 'o.h5'}:p", *arguments) == 0
    with h5py.File(tmp_path / "o.h5", "r") as f:
        stored, chunks = f["p"][...], f["p"].id.get_num_chunks()
    if "uint8" in extra:
        expected = np.rint(expected[[0, 2]] * 255).astype(np.uint8)
    np.testing.assert_allclose(stored, expected, atol=0 if "stream" not in extra else 1e-6)
    assert len(encoded) == chunks  # MFP tiles, and a stream's slabs gathered into rows of chunks: each chunk whole,
    # compressed once by a writer, none written in part through h5py


def test_chunks_divide_the_tile_about_64_a_side_with_every_class_or_as_chunks_says():
    job = PredictJob("net.toml", "in.npy", "o.h5:p")
    assert file_chunks(job, (64, 256, 200), Encoding(2)) == (2, 64, 64, 50)
    assert file_chunks(job, (12, 20, 300), Encoding(2, argmax=True)) == (12, 20, 60)
    assert file_chunks(dataclasses.replace(job, chunks=(8, 32, 32)), (12, 20, 300), Encoding(2)) == (2, 6, 20, 30)
    assert h5_chunk_shape((11, 20, 60), (9, 20, 90), np.dtype("uint8")) == (9, 20, 60)  # no larger than the data


@pytest.mark.parametrize(("output", "extra", "message"), [
    ("o.h5:p", ("--levels", "3"), "only OME-Zarr outputs hold a pyramid"),
    ("o.tif", ("--chunks", "8,16,16"), "which has none: leave --chunks out"),
    ("o.mrc", ("--chunks", "8"), "which has none: leave --chunks out")])
def test_options_an_output_cannot_take_are_refused_not_ignored(config, volume, tmp_path, capsys, output, extra,
                                                               message):
    one_error_line(capsys, predict(config, tmp_path, f"{tmp_path / output}", *extra), message)
    assert not (tmp_path / output.split(":")[0]).exists()


def test_an_hdf5_output_takes_its_chunks_from_chunks(config, volume, tmp_path):
    assert predict(config, tmp_path, f"{tmp_path / 'o.h5'}:p", "--chunks", "2,6,5", "--levels", "1") == 0
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert f["p"].chunks == (3, 2, 6, 5)  # inside the 4 x 12 x 10 tiles
        np.testing.assert_array_equal(f["p"][...], in_memory(config, volume))
