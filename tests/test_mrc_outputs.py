"""MRC outputs (``io/mrc_output.py``): the prediction in MRC2014 modes, placed in angstrom, read
back by mrcfile as written; values MRC cannot keep refused before anything is written; a run
stopped by a full disk resumes to the same bytes."""

from __future__ import annotations

import io
import time

import mrcfile
import numpy as np
import pytest

import densepred
from densepred.errors import DensePredError
from densepred.interfaces.cli import main
from densepred.io import open_array
from densepred.io.mrc_output import check_mrc_values, create_mrc, open_mrc_output
from densepred.io.ome_zarr import Placement
from densepred.running.compute.sink import Sink
from tests.test_predict_files import disk_full_at
from tests.test_reliability_files import one_error_line

TILE = "6,19,17"  # MFP-valid: output tiles of 4 x 12 x 10


@pytest.fixture
def tomogram(tmp_path):
    data = np.random.default_rng(5).normal(size=(13, 47, 39)).astype(np.float32)
    with mrcfile.new(tmp_path / "tomo.rec") as mrc:
        mrc.set_data(data)
        mrc.voxel_size = (13.48, 13.48, 27.0)  # x, y, z
    return data


def predict(config, tmp_path, output, *extra, source="tomo.rec"):
    return main(["predict", str(config), "--input", str(tmp_path / source), "--output", str(tmp_path / output),
                 "--tile", TILE, "--mode", "mfp", "--quiet", *extra])


def read(path):
    with mrcfile.open(path, mode="r") as mrc:  # strict: the file follows MRC2014
        return np.array(mrc.data), int(mrc.header.mode), mrc.is_volume_stack(), mrc.voxel_size


def test_classes_labels_and_one_class_are_written_in_mrc_modes_at_the_inputs_voxel_size(config, tomogram, tmp_path):
    expected = densepred.predict_dense(densepred.create_prediction_net(config), tomogram,
                                       tile_shape=[int(v) for v in TILE.split(",")], mode="mfp")
    assert predict(config, tmp_path, "p.mrc") == 0
    data, mode, stack, size = read(tmp_path / "p.mrc")
    assert (mode, stack, data.shape) == (2, True, expected.shape)  # float32, one volume per class
    np.testing.assert_array_equal(data, expected)
    assert (float(size.x), float(size.y), float(size.z)) == pytest.approx((13.48, 13.48, 27.0))
    np.testing.assert_array_equal(np.asarray(open_array(str(tmp_path / "p.mrc"))), expected)  # read back as C, Z, Y, X

    assert predict(config, tmp_path, "one.map", "--classes", "2", "--dtype", "float16") == 0
    data, mode, stack, _ = read(tmp_path / "one.map")
    assert (mode, stack) == (12, False)
    np.testing.assert_array_equal(data, expected[2].astype(np.float16))

    assert predict(config, tmp_path, "labels.mrc", "--argmax") == 0
    data, mode, _, _ = read(tmp_path / "labels.mrc")
    assert mode == 0
    np.testing.assert_array_equal(data, expected.argmax(axis=0))


def test_a_voxel_size_in_nanometers_is_written_in_angstrom_and_2d_outputs_are_images(tmp_path):
    placed = Placement((30.0, 8.0, 8.0), (0.0, 0.0, 0.0), "nanometer")
    array = create_mrc(tmp_path / "v.mrc", (1, 5, 7, 9), np.dtype("float32"), True, placed)
    array[...] = np.arange(5 * 7 * 9, dtype=np.float32).reshape(1, 5, 7, 9)
    array.flush()
    data, mode, stack, size = read(tmp_path / "v.mrc")
    assert (data.shape, mode, stack) == ((5, 7, 9), 2, False)
    assert (float(size.x), float(size.y), float(size.z)) == (80.0, 80.0, 300.0)
    assert open_mrc_output(tmp_path / "v.mrc", (1, 5, 7, 9)).shape == (1, 5, 7, 9)
    images = create_mrc(tmp_path / "i.mrc", (3, 7, 9), np.dtype("float16"), True, None)  # a 2D image's classes
    images[...] = 1
    images.flush()
    with mrcfile.open(tmp_path / "i.mrc") as mrc:
        assert mrc.is_image_stack()
        assert mrc.data.shape == (3, 7, 9)
        assert float(mrc.voxel_size.x) == 0.0
    create_mrc(tmp_path / "l.mrc", (7, 9), np.dtype("uint8"), False, Placement((2.0, 2.0), (0.0, 0.0), "angstrom"))
    with mrcfile.open(tmp_path / "l.mrc") as mrc:
        assert mrc.is_single_image()
        assert mrc.data.shape == (7, 9)
        assert float(mrc.voxel_size.y) == 2.0


def test_values_mrc_cannot_keep_are_refused_before_anything_is_written(config, tomogram, tmp_path, capsys):
    code = predict(config, tmp_path, "p.mrc", "--dtype", "uint8")
    one_error_line(capsys, code, "--dtype uint8 cannot be written to MRC: its byte mode (0) is signed")
    assert not (tmp_path / "p.mrc").exists()
    assert not (tmp_path / "p.mrc.densepred").exists()
    with pytest.raises(DensePredError, match="this net's 200 classes need more"):
        check_mrc_values(np.uint8, True, 200)
    check_mrc_values(np.uint8, True, 128)  # labels 0..127
    code = predict(config, tmp_path, "tomo.rec", "--overwrite")
    one_error_line(capsys, code, "is the input")
    np.save(tmp_path / "in.npy", tomogram)
    code = predict(config, tmp_path, "tomo.rec", "--overwrite", source="in.npy")  # an MRC densepred did not write
    one_error_line(capsys, code, "was not written by densepred predict")
    assert mrcfile.validate(str(tmp_path / "tomo.rec"), print_file=io.StringIO())  # untouched


def test_a_run_stopped_by_a_full_disk_resumes_to_the_same_bytes(config, tomogram, tmp_path, monkeypatch, capsys):
    assert predict(config, tmp_path, "whole.mrc", "--classes", "1", "--batch-size", "2") == 0
    time.sleep(1.1)  # another second: the header holds no time, so the bytes are the same
    original = disk_full_at(monkeypatch, 9)
    code = predict(config, tmp_path, "part.mrc", "--classes", "1", "--batch-size", "2")
    one_error_line(capsys, code, "the disk is full; the output is incomplete")
    monkeypatch.setattr(Sink, "write", original)
    assert predict(config, tmp_path, "part.mrc", "--classes", "1", "--resume") == 0
    assert (tmp_path / "part.mrc").read_bytes() == (tmp_path / "whole.mrc").read_bytes()
    assert predict(config, tmp_path, "part.mrc", "--classes", "1", "--overwrite") == 0  # its own output: replaced


def test_a_damaged_header_met_on_resume_is_one_line(config, tomogram, tmp_path, monkeypatch, capsys):
    disk_full_at(monkeypatch, 9)
    assert predict(config, tmp_path, "part.mrc", "--batch-size", "2") == 2
    monkeypatch.undo()
    raw = bytearray((tmp_path / "part.mrc").read_bytes())
    raw[212:216] = b"ED\x00\x00"  # a machine stamp mrcfile does not know: it warned, and the warning reached stderr
    (tmp_path / "part.mrc").write_bytes(bytes(raw))
    capsys.readouterr()
    one_error_line(capsys, predict(config, tmp_path, "part.mrc", "--resume"), "start again with --overwrite")
