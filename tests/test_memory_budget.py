"""The memory budget: the default tile fits it, a too small one is a clear error, the numbers never change."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from densepred import DensePredError, PredictJob, predict_dense, predict_to_file
from densepred.geometry import Footprint, default_output_tile
from densepred.interfaces.cli import main
from densepred.networks.memory_budget import MemoryBudget, tile_cost
from densepred.system import resident_bytes
from tests.conftest import NETS, make_net, mark_interrupted


def test_the_estimate_grows_with_every_buffer_it_counts():
    net = make_net(NETS["3d_aniso"])
    geometry = net.geometry
    base = Footprint(1, 2)
    tile = (4, 12, 12)
    assert Footprint(1, 2, batch=2).bytes(geometry, tile, "mfp") > base.bytes(geometry, tile, "mfp")
    assert Footprint(1, 2, prefetch=4).bytes(geometry, tile, "mfp") > base.bytes(geometry, tile, "mfp")
    assert base.bytes(geometry, (8, 24, 24), "mfp") > base.bytes(geometry, tile, "mfp")
    assert base.device_bytes(geometry, tile, "mfp") < base.bytes(geometry, tile, "mfp")
    # on a GPU the inputs read ahead are copied up beside the compute: they count there too
    assert Footprint(1, 2, prefetch=4).device_bytes(geometry, tile, "mfp") > base.device_bytes(geometry, tile, "mfp")
    # a stream holds slabs on the device, however long the tile
    assert base.device_bytes(geometry, (64, 24, 24), "stream") == base.device_bytes(geometry, (512, 24, 24), "stream")


@pytest.mark.parametrize("room", [2**20, 2**24, 2**28])
def test_the_default_tile_is_the_largest_that_fits(room):
    geometry = make_net(NETS["3d_aniso"]).geometry
    budget = MemoryBudget(room, 0, "cpu")
    cost = tile_cost(geometry, "mfp", Footprint(1, 2), budget)
    output = (40, 300, 300)
    tile = default_output_tile(geometry, output, "mfp", room, cost)
    assert cost(tile) <= room or tile == tuple(geometry.stride)
    bigger = tuple(min(t + s, o) for t, s, o in zip(tile, geometry.stride, output, strict=True))
    if bigger != tile:
        assert cost(bigger) > room or bigger == output


def test_a_limit_below_the_smallest_tile_names_the_memory_needed(rng):
    net = make_net(NETS["3d_aniso"], dtype=torch.float32)
    with pytest.raises(DensePredError, match=r"memory limit of .* is too small: even the smallest valid tile needs "
                                             r"about .* GiB .* raise --memory-limit"):
        predict_dense(net, rng.random((20, 60, 60), dtype=np.float32), memory_limit=resident_bytes() + 1000)


def test_smaller_limits_give_smaller_tiles_and_the_same_numbers(rng):
    net = make_net(NETS["3d_aniso"], dtype=torch.float32)
    image = rng.random((23, 95, 87), dtype=np.float32)
    roomy = predict_dense(net, image, memory_limit=resident_bytes() + 2**31)
    tight = predict_dense(net, image, memory_limit=resident_bytes() + 40 * 2**20)
    np.testing.assert_allclose(tight, roomy, atol=2e-5)


def test_an_explicit_tile_over_the_limit_warns_and_runs(rng, caplog):
    net = make_net(NETS["2d_pool2"], dtype=torch.float32)
    with caplog.at_level(logging.WARNING, logger="densepred"):
        predict_dense(net, rng.random((200, 200), dtype=np.float32), tile_shape=199,
                      memory_limit=resident_bytes() + 2**20)
    assert "over the memory limit" in caplog.text


def test_a_resume_under_a_smaller_limit_keeps_its_tiles_and_says_they_are_over(config, rng, tmp_path, caplog):
    np.save(tmp_path / "in.npy", rng.random((21, 70, 65), dtype=np.float32))
    job = PredictJob(str(config), str(tmp_path / "in.npy"), str(tmp_path / "out.zarr"), mirror=True)
    first = predict_to_file(job)
    mark_interrupted(tmp_path / "out.zarr")
    tight = PredictJob(str(config), str(tmp_path / "in.npy"), str(tmp_path / "out.zarr"), mirror=True, resume=True,
                       memory_limit=resident_bytes() + 2**16)
    with caplog.at_level(logging.WARNING, logger="densepred"):
        again = predict_to_file(tight)
    assert again.input_tile == first.input_tile
    assert "over the memory limit" in caplog.text
    assert "the interrupted run planned it" in caplog.text


def test_bad_memory_limits_are_one_line(tmp_path, capsys):
    (tmp_path / "x.toml").write_text("[network]\ndims = 2\nin_channels = 1\nn_classes = 2\n")
    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((30, 30)))
    assert main(["predict", str(tmp_path / "x.toml"), "--input", str(tmp_path / "a.npy"), "--output",
                 str(tmp_path / "b.npy"), "--memory-limit", "lots"]) == 2
    assert "--memory-limit 'lots' is invalid" in capsys.readouterr().err
    with pytest.raises(DensePredError, match="memory_limit = -5 is invalid"):
        predict_dense(make_net(NETS["2d_pool2"]), np.ones((30, 30)), memory_limit=-5)


def test_mapped_zeros_is_a_writable_zero_array_of_any_shape():
    from densepred.system import mapped_zeros

    a = mapped_zeros((3, 5, 7), np.float32)
    assert a.shape == (3, 5, 7)
    assert a.dtype == np.float32
    assert not a.any()
    a[1, 2, 3] = 4.5
    assert a.sum() == 4.5
    assert mapped_zeros((0, 4), np.uint16).shape == (0, 4)


@pytest.mark.parametrize(("environment", "expected"), [
    ({}, True),                                    # import densepred asks for huge pages
    ({"DENSEPRED_NO_MALLOC_TUNING": "1"}, False),  # the opt-out of all allocator tuning
])
def test_import_asks_pytorch_for_huge_pages_unless_the_user_said_otherwise(environment, expected):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "DENSEPRED_NO_MALLOC_TUNING")}
    code = "import densepred.system as s, densepred; print(s.huge_pages_requested())"
    out = subprocess.run([sys.executable, "-c", code], env={**env, **environment}, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == str(expected)


@pytest.mark.parametrize(("value", "asked"), [(None, True), ("0", False), ("1", True)])
def test_a_huge_pages_setting_the_user_made_is_kept(monkeypatch, value, asked):
    """What ``import densepred`` leaves in the variable PyTorch reads (the processes above show
    that PyTorch follows it)."""
    from densepred.system import request_huge_pages

    monkeypatch.delenv("DENSEPRED_NO_MALLOC_TUNING", raising=False)
    if value is None:
        monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    else:
        monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", value)
    assert request_huge_pages() is asked
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == (value or "1")


def test_a_gpu_run_finishes_tiles_on_a_quarter_of_the_host_cores_and_counts_their_batches(monkeypatch):
    from densepred.running.planning import tiling

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for cores, writers in ((2, 2), (8, 2), (16, 4), (64, 4)):
        monkeypatch.setattr(tiling, "available_cores", lambda cores=cores: cores)
        assert tiling.writer_threads(cpu) == 2  # the CPU's cores also compute
        assert tiling.writer_threads(gpu) == writers
    geometry = make_net(NETS["3d_aniso"]).geometry
    on_cpu, on_gpu = tiling.footprint_on(cpu, 1, 2, pyramid=True), tiling.footprint_on(gpu, 1, 2, pyramid=True)
    assert (on_gpu.writers, on_gpu.pending) == (4, 4)
    assert on_gpu.bytes(geometry, (8, 24, 24), "mfp") > on_cpu.bytes(geometry, (8, 24, 24), "mfp")
