"""HDF5 outputs compressed by the writers (``io/hdf5_chunks.py``): the chunks a box covers are
stored as HDF5's shuffle and deflate filters would store them, so h5py reads back every value;
boxes that cover parts of chunks go through h5py, and datasets with other filters too."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from densepred.interfaces.cli import main
from densepred.io.hdf5_chunks import DirectChunks
from tests.test_predict_files import in_memory, predict


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
def test_whole_chunks_read_back_as_written_and_parts_of_chunks_are_left_to_h5py(tmp_path, dtype):
    rng = np.random.default_rng(3)
    shape, chunks = (2, 13, 29, 19), (2, 4, 8, 8)
    values = (rng.random(shape) * 250).astype(dtype)
    f, array = dataset(tmp_path / "o.h5", shape, dtype, chunks)
    direct = DirectChunks.of(array)
    assert not direct.write((slice(None), slice(1, 5), slice(0, 8), slice(0, 8)), values[:, 1:5, :8, :8])
    assert not direct.write((slice(None), slice(0, 4), slice(0, 8), slice(0, 7)), values[:, :4, :8, :7])
    assert array.id.get_num_chunks() == 0  # nothing written for a box that is not whole chunks
    for z in range(0, 13, 8):  # boxes of 2 x 2 x 3 chunks, clipped at the edges (13, 29, 19)
        for y in range(0, 29, 16):
            for x in range(0, 19, 24):
                box = (slice(None), slice(z, z + 8), slice(y, y + 16), slice(x, x + 24))
                assert direct.write(box, values[box])
    f.close()
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert f["p"].id.get_num_chunks() == 4 * 4 * 3
        np.testing.assert_array_equal(f["p"][...], values)


def test_a_dataset_with_other_filters_is_written_by_h5py(tmp_path):
    f, array = dataset(tmp_path / "o.h5", (5, 6), "float32", (2, 3), compression="gzip", fletcher32=True)
    assert DirectChunks.of(array) is None
    f.close()


@pytest.mark.parametrize("extra", [(), ("--dtype", "uint8", "--classes", "0,2"), ("--mode", "stream")])
def test_a_predicted_hdf5_output_is_the_in_memory_prediction(config, volume, tmp_path, extra, monkeypatch):
    expected = in_memory(config, volume)
    written, write = [], DirectChunks.write
    monkeypatch.setattr(DirectChunks, "write", lambda self, key, values: written.append(write(self, key, values))
                        or written[-1])
    arguments = [a for a in extra if a not in ("--mode", "stream")]
    if "stream" in extra:  # a stream writes slabs, parts of its chunks: through h5py
        assert main(["predict", str(config), "--input", str(tmp_path / "in.npy"), "--output",
                     f"{tmp_path / 'o.h5'}:p", "--mode", "stream", "--quiet"]) == 0
    else:
        assert predict(config, tmp_path, f"{tmp_path / 'o.h5'}:p", *arguments) == 0
    with h5py.File(tmp_path / "o.h5", "r") as f:
        stored = f["p"][...]
    if "uint8" in extra:
        expected = np.rint(expected[[0, 2]] * 255).astype(np.uint8)
    np.testing.assert_allclose(stored, expected, atol=0 if "stream" not in extra else 1e-6)
    assert written
    assert "stream" in extra or all(written)  # the MFP tiles are whole chunks, each written directly
