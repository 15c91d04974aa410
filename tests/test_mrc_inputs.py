"""MRC inputs (``io/mrc.py``): cryo-EM tomograms in each mode predict as the same volume given
whole, placed by the header's voxel size in angstrom; files off the standard are read with a
warning, damaged ones are one line."""

from __future__ import annotations

import json
import logging

import mrcfile
import numpy as np
import pytest
import zarr

from densepred.interfaces.cli import main
from densepred.io import open_array
from tests.conftest import make_config
from tests.test_reliability_files import one_error_line


def tomogram(dtype, shape=(11, 29, 23)):
    values = np.random.default_rng(8).random(shape)
    if np.dtype(dtype).kind == "f":
        return (values * 4 - 2).astype(dtype)
    info = np.iinfo(dtype)
    return (info.min + values * (float(info.max) - info.min)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.float16, np.float32])
def test_a_tomogram_predicts_as_the_same_volume_given_whole_and_lies_at_its_voxel_size(tmp_path, dtype):
    data = tomogram(dtype)
    with mrcfile.new(tmp_path / "tomo.rec") as mrc:
        mrc.set_data(data)
        mrc.voxel_size = (13.48, 13.48, 27.0)  # x, y, z
        mrc.header.origin = (100.0, 200.0, 300.0)  # left out: programs disagree on what it means
    np.save(tmp_path / "whole.npy", data)
    np.testing.assert_array_equal(np.asarray(open_array(str(tmp_path / "tomo.rec"))), data)
    if dtype not in (np.int8, np.float32):  # the values are the same: their prediction is the same too
        return
    config = make_config(tmp_path)
    for source, output in (("tomo.rec", "a.zarr"), ("whole.npy", "b.zarr")):
        assert main(["predict", str(config), "--input", str(tmp_path / source), "--output", str(tmp_path / output),
                     "--quiet"]) == 0
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a.zarr" / "0")[:],
                                  zarr.open_array(tmp_path / "b.zarr" / "0")[:])
    image = json.loads((tmp_path / "a.zarr" / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
    assert image["axes"][1]["unit"] == "angstrom"
    assert image["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 27.0, 13.48, 13.48]


def test_a_header_off_the_standard_is_read_with_a_warning_and_a_damaged_file_is_one_line(tmp_path, caplog, capsys):
    data = tomogram(np.float32)
    with mrcfile.new(tmp_path / "old.mrc") as mrc:
        mrc.set_data(data)
    raw = bytearray((tmp_path / "old.mrc").read_bytes())
    raw[208:212] = b"\x00\x00\x00\x00"  # no MAP ID, as files from before MRC2000 have
    (tmp_path / "old.mrc").write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="densepred"):
        np.testing.assert_array_equal(np.asarray(open_array(str(tmp_path / "old.mrc"))), data)
    assert "does not follow the MRC2014 standard" in caplog.text
    (tmp_path / "noise.mrc").write_bytes(np.random.default_rng(1).bytes(3000))
    config = make_config(tmp_path)
    code = main(["predict", str(config), "--input", str(tmp_path / "noise.mrc"), "--output", str(tmp_path / "n.zarr")])
    one_error_line(capsys, code, "it is damaged, or not an MRC file")
    assert not (tmp_path / "n.zarr").exists()
    code = main(["predict", str(config), "--input", str(tmp_path / "old.mrc"), "--output", str(tmp_path / "p.ims")])
    one_error_line(capsys, code, "is an Imaris file, which densepred reads but does not write")
