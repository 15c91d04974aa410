"""HDF5 files as acquisition software writes them: datasets compressed with filters beyond
HDF5's own (Blosc, Bitshuffle-LZ4: detector and tomography software), decoded through
hdf5plugin when a dataset needs one (a filter nothing here decodes is one line at open, not a
corrupt-file error mid-run); BigDataViewer/BigStitcher files, whose 16-bit unsigned volumes
are stored as int16."""

from __future__ import annotations

import subprocess
import sys

import h5py
import hdf5plugin
import numpy as np
import pytest

import densepred
from densepred.interfaces.cli import main
from tests.conftest import make_config
from tests.test_reliability_files import one_error_line


@pytest.mark.slow  # 5 s: a fresh Python process, to see the filters registered without help
def test_blosc_and_bitshuffle_datasets_predict_as_their_arrays_in_a_fresh_process(tmp_path):
    config = make_config(tmp_path)
    data = np.random.default_rng(1).integers(0, 4000, (11, 43, 37)).astype(np.uint16)
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f.create_dataset("blosc", data=data, chunks=(4, 16, 16), **hdf5plugin.Blosc(cname="zstd"))
        f.create_dataset("bitshuffle", data=data, chunks=(4, 16, 16), **hdf5plugin.Bitshuffle())
    expected = densepred.predict_dense(densepred.create_prediction_net(densepred.load_config(config)), data,
                                       mirror=True, tile_shape=(9, 23, 21))
    for name in ("blosc", "bitshuffle"):  # a process of its own: hdf5plugin not imported before densepred opens it
        done = subprocess.run([sys.executable, "-m", "densepred", "predict", str(config), "--input",
                               f"{tmp_path / 'scan.h5'}:{name}", "--output", str(tmp_path / f"{name}.npy"),
                               "--mirror", "--tile", "9,23,21", "--quiet"], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"), expected)


def test_a_filter_nothing_here_decodes_is_one_line_at_open(tmp_path, capsys):
    with h5py.File(tmp_path / "odd.h5", "w") as f:  # chunks stored as a filter no one registered would write them
        ds = f.create_dataset("raw", shape=(8, 30, 30), dtype="uint8", chunks=(8, 30, 30), compression=32999,
                              allow_unknown_filter=True)
        ds.id.write_direct_chunk((0, 0, 0), np.random.default_rng(2).integers(0, 255, 7200, np.uint8).tobytes())
    one_error_line(capsys, main(["predict", str(make_config(tmp_path)), "--input", f"{tmp_path / 'odd.h5'}:raw",
                                 "--output", str(tmp_path / "o.npy"), "--quiet"]),
                   "is compressed with HDF5 filter 32999 (unnamed), which neither HDF5 nor hdf5plugin decodes here")
    assert not (tmp_path / "o.npy").exists()


def test_a_bigdataviewer_view_reads_its_unsigned_values_and_names_its_full_resolution(tmp_path):
    from densepred.io import open_array
    from densepred.io.arrays import ArraySpec, input_placement

    config = make_config(tmp_path)
    data = np.random.default_rng(3).integers(0, 65536, (9, 40, 34)).astype(np.uint16)  # half of it above 32767
    with h5py.File(tmp_path / "dataset.h5", "w") as f:  # as BigStitcher writes a view: int16 holding uint16 bits
        f["s00/resolutions"] = np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 1.0]])
        f["s00/subdivisions"] = np.array([[32, 32, 4], [16, 16, 4]], dtype=np.int32)
        f.create_dataset("t00000/s00/0/cells", data=data.astype(np.int16), chunks=(4, 32, 32))
        f.create_dataset("t00000/s00/1/cells", data=data[:, ::2, ::2].astype(np.int16), chunks=(4, 16, 16))
        f["signed"] = data.astype(np.int16)  # not a BigDataViewer volume: int16 as it is
    (tmp_path / "dataset.xml").write_text(BDV_XML)
    view = open_array(f"{tmp_path / 'dataset.h5'}:t00000/s00")
    assert view.dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(view), data)
    np.testing.assert_array_equal(view[2:5, 7, 3:30], data[2:5, 7, 3:30])
    assert open_array(f"{tmp_path / 'dataset.h5'}:signed")[...].min() < 0
    assert main(["predict", str(config), "--input", f"{tmp_path / 'dataset.h5'}:t00000/s00/0/cells", "--output",
                 str(tmp_path / "o.npy"), "--mirror", "--tile", "9,23,21", "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), densepred.predict_dense(
        densepred.create_prediction_net(densepred.load_config(config)), data, mirror=True, tile_shape=(9, 23, 21)))
    for level, (voxel, shift) in enumerate((((2.0, 0.4, 0.4), (0.0, 0.0, 0.0)), ((2.0, 0.8, 0.8), (0.0, 0.2, 0.2)))):
        placed = input_placement(ArraySpec.parse(f"{tmp_path / 'dataset.h5'}:t00000/s00/{level}/cells"))
        assert placed.voxel_size == pytest.approx(voxel)  # the XML's x y z, level 1 halved in x and y
        assert placed.translation == pytest.approx(shift)
        assert placed.unit == "micrometer"


BDV_XML = """<?xml version="1.0" encoding="UTF-8"?>
<SpimData version="0.2">
  <BasePath type="relative">.</BasePath>
  <SequenceDescription>
    <ImageLoader format="bdv.hdf5"><hdf5 type="relative">dataset.h5</hdf5></ImageLoader>
    <ViewSetups>
      <ViewSetup><id>0</id><name>0</name><size>34 40 9</size>
        <voxelSize><unit>\u00b5m</unit><size>0.4 0.4 2.0</size></voxelSize></ViewSetup>
    </ViewSetups>
  </SequenceDescription>
</SpimData>
"""
