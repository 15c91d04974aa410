"""`densepred plan`: blocks of whole tiles, their halos, bytes and time, before anything runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from densepred import DensePredError, load_config
from densepred.geometry import BlockPlan
from densepred.interfaces.cli import main
from densepred.running.planning.job_plan import plan_job
from tests.conftest import make_config


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 60), st.integers(1, 9), st.integers(1, 4), st.integers(1, 9)),
                min_size=1, max_size=3))
def test_blocks_cover_every_output_voxel_once_and_read_their_own_halo(axes):
    shape = tuple(a[0] for a in axes)
    tile = tuple(min(a[1], a[0]) for a in axes)
    per_block = tuple(a[2] for a in axes)
    fov = tuple(a[3] for a in axes)
    plan = BlockPlan.create(shape, tile, per_block, fov)
    covered = np.zeros(shape, dtype=np.int64)
    read = 0
    for _, box in plan.boxes():
        covered[tuple(slice(a, b) for a, b in box)] += 1
        assert all(a % (t * n) == 0 for (a, _), t, n in zip(box, tile, per_block, strict=True))  # whole shards
        read += math.prod(b - a + f - 1 for (a, b), f in zip(box, fov, strict=True))
    assert (covered == 1).all()
    assert read == plan.input_voxels()


def test_plan_of_a_volume_counts_tiles_bytes_and_time_from_a_profile(tmp_path):
    config = make_config(tmp_path)
    (tmp_path / "profile.csv").write_text(
        "mode,input_shape,output_shape,output_voxels,seconds,voxels_per_s,peak_bytes,useful_gflops,"
        "fraction_of_peak,status\nmfp,6x19x17,4x12x10,480,0.001,480000,1,1,0.1,ok\n")
    plan = plan_job(config, shape=(1002, 1007, 1009), workers=4, tile=(6, 19, 17), mode="mfp",
                    stored_channels=1, stored_dtype="uint8", profile_csv=tmp_path / "profile.csv")
    geometry_fov = (3, 8, 8)
    assert plan.output_shape == tuple(n - f + 1 for n, f in zip((1002, 1007, 1009), geometry_fov, strict=True))
    assert plan.rate == 480000
    assert plan.seconds == pytest.approx(plan.output_voxels / (480000 * 4))
    assert plan.input_bytes == plan.blocks.input_voxels()  # uint8, one channel
    assert plan.output_bytes > plan.output_voxels  # the pyramid adds to level 0
    assert "this tile" in plan.rate_source
    report = plan.report()
    assert "blocks" in report
    assert "on 4 worker(s)" in report


def test_plan_reads_only_the_inputs_shape_and_times_a_tile_when_asked(tmp_path):
    config = make_config(tmp_path)
    np.save(tmp_path / "in.npy", np.random.default_rng(0).random((20, 70, 60), dtype=np.float32))
    plan = plan_job(config, input=str(tmp_path / "in.npy"), measure=True, tile=(6, 19, 17), mode="mfp")
    assert plan.output_shape == (18, 63, 53)
    assert plan.rate > 0
    assert not list(tmp_path.glob("*.zarr"))


def test_plan_mistakes_are_one_line(tmp_path, capsys):
    config = make_config(tmp_path)
    assert main(["plan", str(config), "--shape", "10,10"]) == 2
    assert "--shape '10,10' is invalid" in capsys.readouterr().err
    with pytest.raises(DensePredError, match="give the input"):
        plan_job(load_config(config))
    assert main(["plan", str(config), "--shape", "100,100,100", "--workers", "0"]) == 2
    assert "workers = 0 is invalid" in capsys.readouterr().err


def test_the_plan_says_where_the_output_will_lie_and_counts_the_pyramid_that_will_be_written(tmp_path):
    """An anisotropic input (40 x 4 x 4 nm) gets a pyramid that halves y and x first: the plan's
    bytes are those of the levels the prediction writes, and it says the placement it read."""
    import zarr

    config = make_config(tmp_path)
    data = np.random.default_rng(1).random((40, 300, 280), dtype=np.float32)
    array = zarr.create_array(tmp_path / "raw.zarr", data=data, chunks=(20, 150, 140), zarr_format=2)
    array.attrs.update({"resolution": [40, 4, 4], "offset": [80, 0, 12]})
    plan = plan_job(config, input=str(tmp_path / "raw.zarr"))
    assert "placed   voxel size 40 x 4 x 4, the input's voxel 0 at (80, 0, 12)" in plan.report()
    assert main(["predict", str(config), "--input", str(tmp_path / "raw.zarr"), "--output", str(tmp_path / "o.zarr"),
                 "--quiet"]) == 0
    group = zarr.open_group(tmp_path / "o.zarr", mode="r")
    written = sum(math.prod(group[str(i)].shape) * 4 for i in range(len(group.attrs["ome"]["multiscales"][0]
                                                                      ["datasets"])))
    assert plan.output_bytes == written
    np.save(tmp_path / "raw.npy", data)  # a file that names no scale
    assert "placed   voxel size 1, at the origin" in plan_job(config, input=str(tmp_path / "raw.npy")).report()
