"""Imaris inputs (``io/imaris.py``). The files are written as Imaris lays them out: attribute
values as arrays of single characters, each channel's data padded to whole chunks beyond the
image's size, the extent as the outer edges of the voxels, x first."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import zarr

import densepred
from densepred.interfaces.cli import main
from densepred.io import ArraySpec, open_array
from densepred.io.arrays import input_placement
from densepred.networks.weights import save_weights
from tests.conftest import CONFIG, make_config
from tests.test_reliability_files import one_error_line


def chars(value):
    return np.array(list(str(value)), dtype="S1")


def write_imaris(path, volume, voxel=(0.2, 0.1, 0.1), low=(5.0, -3.0, 1.0), unit="um", compression="gzip"):
    """``volume`` (t, c, z, y, x) as an Imaris file; ``voxel`` and ``low`` z, y, x."""
    times, channels, *size = volume.shape
    with h5py.File(path, "w") as f:
        info = f.create_group("DataSetInfo/Image")
        for axis, n, v, lo in zip("ZYX", size, voxel, low, strict=True):
            index = "ZYX".index(axis)
            info.attrs[axis] = chars(n)
            info.attrs[f"ExtMin{2 - index}"] = chars(lo)
            info.attrs[f"ExtMax{2 - index}"] = chars(lo + n * v)
        info.attrs["Unit"] = chars(unit)
        for t in range(times):
            for c in range(channels):
                padded = np.zeros([-(-n // 16) * 16 for n in size], volume.dtype)  # whole chunks of 16
                padded[tuple(slice(0, n) for n in size)] = volume[t, c]
                padded[tuple(slice(n, None) for n in size)] = 99  # what lies beyond is never read
                f.create_dataset(f"DataSet/ResolutionLevel 0/TimePoint {t}/Channel {c}/Data", data=padded,
                                 chunks=(16, 16, 16), compression=compression)


@pytest.fixture
def volume():
    return np.random.default_rng(12).integers(0, 4096, (2, 1, 13, 37, 29), dtype=np.uint16)


def test_each_time_point_is_its_volume_cut_to_the_image_and_placed_by_its_extent(tmp_path, volume):
    write_imaris(tmp_path / "cells.ims", volume)
    for t in range(2):
        array = open_array(f"{tmp_path / 'cells.ims'}@t={t}")
        assert array.shape == volume.shape[1:]
        np.testing.assert_array_equal(np.asarray(array), volume[t])
        np.testing.assert_array_equal(array[0, 3:9, 30:, 2:27:5], volume[t, 0, 3:9, 30:, 2:27:5])
    placement = input_placement(ArraySpec.parse(str(tmp_path / "cells.ims")))
    np.testing.assert_allclose(placement.voxel_size, (0.2, 0.1, 0.1))
    np.testing.assert_allclose(placement.translation, (5.1, -2.95, 1.05))  # the first voxel's centre
    assert placement.unit == "micrometer"


def test_a_two_channel_file_predicts_as_the_same_volume_given_whole(tmp_path):
    volume = np.random.default_rng(13).random((1, 2, 11, 31, 27)).astype(np.float32)
    write_imaris(tmp_path / "two.ims", volume, compression=None)
    config = tmp_path / "two.toml"
    config.write_text(CONFIG.replace("in_channels = 1", "in_channels = 2"))
    save_weights(densepred.build_net(densepred.load_config(config)), tmp_path / "run" / "stream-LAST.safetensors")
    np.save(tmp_path / "whole.npy", volume[0])
    for source, output in (("two.ims", "a.zarr"), ("whole.npy", "b.zarr")):
        assert main(["predict", str(config), "--input", str(tmp_path / source), "--output", str(tmp_path / output),
                     "--quiet"]) == 0
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a.zarr" / "0")[:],
                                  zarr.open_array(tmp_path / "b.zarr" / "0")[:])


def test_a_time_series_a_damaged_file_and_an_imaris_output_are_one_line(tmp_path, volume, capsys):
    write_imaris(tmp_path / "cells.ims", volume)
    config = make_config(tmp_path)
    cases = {("cells.ims", "o.zarr"): "is a time series of 2 volumes",
             ("plain.ims", "o.zarr"): "is not an Imaris file densepred can read",
             ("cells.ims@t=0", "o.ims"): "is an Imaris file, which densepred reads but does not write"}
    with h5py.File(tmp_path / "plain.ims", "w") as f:
        f["raw"] = volume[0, 0]
    for (source, output), message in cases.items():
        code = main(["predict", str(config), "--input", str(tmp_path / source), "--output", str(tmp_path / output)])
        one_error_line(capsys, code, message)
