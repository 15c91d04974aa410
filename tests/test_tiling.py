"""The tiles and the engine a run picks by itself: balanced tiles, and ``mode="auto"`` streaming
where a stream spends fewer FLOPs than cube tiles (and only there)."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import densepred
from densepred.geometry import STREAM_SLAB, Footprint, balanced_tile
from densepred.networks.memory_budget import MemoryBudget
from densepred.running.planning.tiling import (
    FLOW_EXTRA_WORK,
    FLOW_MAX_VOXELS,
    FLOW_MIN_VOXELS,
    STREAM_EFFICIENCY,
    flow_tile,
    plan_and_mode,
    plan_tiles,
)
from densepred.system import resident_bytes

from .conftest import make_net

CPU = torch.device("cpu")
# Heavy layers before the last (the m36 pattern): cube tiles recompute their borders, a stream
# pays the z border once.
DEEP_Z = {"dims": 3, "in_channels": 1, "n_classes": 2,
          "layers": [{"filters": 6, "kernel": 3, "pool": 2}, {"filters": 8, "kernel": 5}, {"filters": 8, "kernel": 5},
                     {"filters": 4, "kernel": 1}]}


@settings(max_examples=200, deadline=None)
@given(tile=st.lists(st.integers(1, 300), min_size=3, max_size=3),
       output=st.lists(st.integers(1, 2000), min_size=3, max_size=3),
       stride=st.lists(st.integers(1, 9), min_size=3, max_size=3), stream=st.booleans())
def test_a_balanced_tile_needs_no_more_tiles_and_is_no_larger(tile, output, stride, stream):
    tile = [t * s for t, s in zip(tile, stride, strict=True)]  # the planner's tiles are stride multiples
    mode = "stream" if stream else "mfp"
    balanced = balanced_tile(tile, output, stride, mode)
    for axis, (t, b, o, s) in enumerate(zip(tile, balanced, output, stride, strict=True)):
        assert 1 <= b <= min(t, o)
        assert math.ceil(o / b) == math.ceil(o / min(t, o))
        step = STREAM_SLAB if stream and axis == 0 else s
        assert b in (o, t) or b % step == 0


def budget(gib: float) -> MemoryBudget:
    return MemoryBudget(int(gib * 2**30), 0, "cpu")


def test_auto_streams_a_long_volume_through_a_net_with_a_deep_z_field_of_view():
    geometry = make_net(DEEP_Z).geometry
    footprint = Footprint(1, 2)
    plan, mode = plan_and_mode(geometry, (700, 180, 180), None, "auto", True, budget(1 / 16), footprint, CPU)
    assert mode == "stream"
    cube = plan_tiles(geometry, (700, 180, 180), None, "auto", True, budget(1 / 16), footprint)
    stream_work = len(plan) * geometry.flops(plan.input_tile, "stream") / STREAM_EFFICIENCY
    assert stream_work < len(cube) * geometry.flops(cube.input_tile, "mfp")
    assert plan.output_tile[0] % STREAM_SLAB == 0
    assert plan.grid[0] == math.ceil(700 / plan.output_tile[0])


@pytest.mark.parametrize("spatial", [(20, 24, 22), (40, 300, 300)])
def test_auto_keeps_cube_tiles_where_a_stream_saves_nothing(spatial):
    # One tile covers the first image; the second is too thin along z for a stream to pay off.
    geometry = make_net(DEEP_Z).geometry
    _plan, mode = plan_and_mode(geometry, spatial, None, "auto", True, budget(0.25), Footprint(1, 2), CPU)
    assert mode in ("mfp", "dilated")


def test_auto_weighs_streams_on_cuda_too_and_a_tile_given_never_streams():
    geometry = make_net(DEEP_Z).geometry
    args = ((700, 180, 180), None, "auto", True, MemoryBudget(2**26, 0, "cuda"), Footprint(1, 2))
    assert plan_and_mode(geometry, *args, torch.device("cuda"))[1] == "stream"
    tile = (60, 60, 60)
    plan, mode = plan_and_mode(geometry, (700, 180, 180), tile, "auto", True, budget(0.25), Footprint(1, 2), CPU)
    assert mode != "stream"
    assert plan.input_tile == tile


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_cheap_nets_default_tile_leaves_several_tiles_in_flight(caplog, device):
    geometry = make_net({"dims": 3, "in_channels": 1, "n_classes": 2, "layers": [{"filters": 2, "kernel": 1}]}).geometry
    roomy = MemoryBudget(2**38, 0, device)
    with caplog.at_level(logging.INFO, logger="densepred"):
        plan, _ = plan_and_mode(geometry, (256, 512, 512), None, "mfp", True, roomy, Footprint(1, 2),
                                torch.device(device))
    # a 1x1x1 net spends no more per voxel on small tiles
    assert FLOW_MIN_VOXELS <= math.prod(plan.output_tile) <= FLOW_MAX_VOXELS
    assert len(plan) == 256 * 512 * 512 // FLOW_MAX_VOXELS
    assert "so reading and writing overlap compute" in caplog.text
    small, _ = plan_and_mode(geometry, (40, 100, 100), None, "mfp", True, roomy, Footprint(1, 2), torch.device(device))
    assert len(small) == 1  # below 128^3 voxels a tile is not split for flow


def test_a_tile_is_split_only_as_far_as_the_border_costs_little(caplog):
    # a field of view of 61 over a 400^3 output: halves spend 5% more per voxel, quarters 11%
    wide = {"dims": 3, "in_channels": 1, "n_classes": 2,
            "layers": [{"filters": 4, "kernel": 9, "pool": 2}, {"filters": 4, "kernel": 9, "pool": 2},
                       {"filters": 4, "kernel": 9}, {"filters": 2, "kernel": 1}]}
    geometry = make_net(wide).geometry
    spatial = tuple(400 + f - 1 for f in geometry.fov)
    with caplog.at_level(logging.INFO, logger="densepred"):
        plan = plan_tiles(geometry, spatial, None, "dilated", False, MemoryBudget(2**38, 0, "cpu"), Footprint(1, 2))
    assert plan.output_tile == (200, 400, 400)
    assert "overlap compute" in caplog.text

    def work(tile):
        return geometry.flops(geometry.input_shape_for(tile), "dilated") / math.prod(tile)

    whole = (400, 400, 400)
    assert work((200, 400, 400)) <= work(whole) * (1 + FLOW_EXTRA_WORK) < work((200, 200, 400))
    assert flow_tile(geometry, whole, whole, lambda t: True) == (200, 400, 400)
    assert flow_tile(geometry, whole, whole, lambda t: math.prod(t) > 2 * 400**3 // 3) == whole  # nothing fits


def test_auto_streaming_equals_dilated_and_says_so(rng, caplog):
    net = make_net(DEEP_Z, dtype=torch.float32)
    volume = rng.random((83, 37, 33), dtype=np.float32)
    limit = resident_bytes() + 48 * 2**20  # small cube tiles: the stream wins
    with caplog.at_level(logging.INFO, logger="densepred"):
        got = densepred.predict_dense(net, volume, mirror=True, memory_limit=limit)
    assert "streaming" in caplog.text
    expected = densepred.predict_dense(net, volume, mirror=True, mode="dilated", tile_shape=(60, 40, 40))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_a_file_job_records_the_stream_auto_chose(rng, tmp_path):
    from densepred.networks.weights import save_weights

    config = tmp_path / "deep.toml"
    network = "\n".join(f"{k} = {json.dumps(v)}" for k, v in DEEP_Z.items() if k != "layers")
    layers = ", ".join("{ " + ", ".join(f"{k} = {v}" for k, v in layer.items()) + " }" for layer in DEEP_Z["layers"])
    config.write_text(f'name = "deep"\nsave_dir = "run"\n\n[network]\n{network}\nlayers = [{layers}]\n')
    save_weights(make_net(DEEP_Z, dtype=torch.float32), tmp_path / "run" / "deep-LAST.safetensors")
    volume = rng.random((83, 37, 33), dtype=np.float32)
    np.save(tmp_path / "in.npy", volume)
    job = densepred.PredictJob(str(config), str(tmp_path / "in.npy"), str(tmp_path / "out.zarr"), mirror=True,
                               memory_limit=resident_bytes() + 48 * 2**20, progress=False, levels=1)
    densepred.predict_to_file(job)
    record = json.loads((tmp_path / "out.zarr.densepred" / "run.json").read_text())
    assert record["tiles"]["mode"] == "stream"
    expected = densepred.predict_dense(densepred.create_prediction_net(str(config)), volume, mirror=True,
                                       mode="dilated", tile_shape=(60, 40, 40))
    got = zarr.open_group(tmp_path / "out.zarr", mode="r")["0"][...]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_a_given_tile_that_makes_many_times_the_default_count_of_tiles_is_warned_about(caplog):
    geometry = make_net({"dims": 3, "in_channels": 1, "n_classes": 2, "layers": [{"filters": 2, "kernel": 1}]}).geometry
    args = ((64, 256, 256), "mfp", True, MemoryBudget(2**34, 0, "cpu"), Footprint(1, 2))
    with caplog.at_level(logging.WARNING, logger="densepred"):
        plan = plan_tiles(geometry, args[0], (4, 4, 4), *args[1:])
        assert len(plan) == 16 * 64 * 64
        assert "tile [4, 4, 4] cuts the output into 65,536 tiles" in caplog.text
        assert "leave the tile out" in caplog.text
        caplog.clear()
        plan_tiles(geometry, args[0], (32, 64, 64), *args[1:])  # 128 tiles: no word
        plan_tiles(geometry, args[0], None, *args[1:])
    assert caplog.text == ""
