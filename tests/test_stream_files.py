"""The stream engine through the tile pipeline: slab-wise reads and writes, the same numbers as
``dilated``, each input slice read once, and a crash mid-stream resumed to the same bytes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import zarr

import densepred
from densepred.geometry import STREAM_SLAB
from densepred.running.jobs import own_job as file_job


class CountingReads:
    """An array-like that records which z slices (first spatial axis) every read touched."""

    def __init__(self, data: np.ndarray):
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads: list[range] = []

    def __getitem__(self, key):
        z = key[0] if isinstance(key, tuple) else key
        self.reads.append(range(*z.indices(self.shape[0])))
        return self.data[key]


@pytest.fixture
def volume():
    return np.random.default_rng(21).random((53, 37, 31), dtype=np.float32)


def test_a_stream_reads_each_input_slice_once_in_slabs_and_equals_dilated(config, volume):
    net = densepred.create_prediction_net(config)
    whole = tuple(volume.shape)  # one tile: the whole image, streamed along z
    source = CountingReads(volume)
    got = densepred.predict_dense(net, source, tile_shape=whole, mode="stream")
    expected = densepred.predict_dense(net, volume, tile_shape=whole, mode="dilated")
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    read = sorted(z for r in source.reads for z in r)
    assert read == list(range(volume.shape[0]))  # every slice once


@pytest.mark.parametrize("mirror", [False, True])
def test_a_streams_slabs_are_read_in_blocks_that_end_on_chunk_rows(mirror):
    from densepred.geometry import TilePlan
    from densepred.io import ChannelFirst, WindowRows, read_window

    volume = np.random.default_rng(25).random((150, 20, 17), dtype=np.float32)
    roi = ((5, 148), (0, 18), (0, 15)) if not mirror else ((5, 150), (0, 20), (0, 17))  # windows from row 5
    plan = TilePlan.create(volume.shape, (3, 3, 3), (100, 20, 17), mirror, roi)
    counting = CountingReads(volume)
    windows = WindowRows(ChannelFirst(counting, 1, 3), plan, 64)
    for tile in plan.tiles():
        counting.reads.clear()
        length = plan.input_tile[0]
        for a in range(0, length, STREAM_SLAB):
            b = min(a + STREAM_SLAB, length)
            np.testing.assert_array_equal(windows.read(tile, a, b),
                                          read_window(ChannelFirst(volume, 1, 3), plan, tile, rows=(a, b)))
        lo, hi, take = plan.source_window(tile)[0]
        if take is None:  # blocks end on multiples of 64 in the image: each 64-deep chunk decoded once
            ends = [*range(64 * (lo // 64 + 1), hi, 64), hi]
            assert [(r.start, r.stop) for r in counting.reads] == list(zip([lo, *ends[:-1]], ends, strict=True))
        else:  # mirrored: blocks of 64 window rows
            assert len(counting.reads) == math.ceil(length / 64)


def test_a_mirrored_stream_in_several_tiles_equals_dilated(config, volume):
    net = densepred.create_prediction_net(config)
    tile = (volume.shape[0] + 8, 21, 19)  # long along z, several tiles across
    got = densepred.predict_dense(net, volume, tile_shape=tile, mode="stream", mirror=True)
    expected = densepred.predict_dense(net, volume, tile_shape=tile, mode="dilated", mirror=True)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_a_stream_crashed_mid_tile_resumes_to_the_same_bytes(config, volume, tmp_path, monkeypatch):
    np.save(tmp_path / "in.npy", volume)

    def job(output, **options):
        return densepred.PredictJob(config, str(tmp_path / "in.npy"), str(tmp_path / output), mode="stream",
                                    tile=(volume.shape[0], 21, 19), progress=False, levels=1, **options)

    densepred.predict_to_file(job("whole.zarr"))
    calls = {"n": 0}
    original = file_job.NonFinite.check_box

    def crash(self, start, values):
        calls["n"] += 1
        if calls["n"] == 7:  # inside a tile's stream, after some of its slabs were written
            raise OSError(5, "Input/output error")
        return original(self, start, values)

    monkeypatch.setattr(file_job.NonFinite, "check_box", crash)
    with pytest.raises(densepred.DensePredError, match="Input/output error"):
        densepred.predict_to_file(job("cut.zarr"))
    monkeypatch.setattr(file_job.NonFinite, "check_box", original)
    densepred.predict_to_file(job("cut.zarr", resume=True))
    whole = zarr.open_group(tmp_path / "whole.zarr", mode="r")["0"][...]
    cut = zarr.open_group(tmp_path / "cut.zarr", mode="r")["0"][...]
    assert whole.tobytes() == cut.tobytes()


def test_a_long_stream_is_written_in_shards_cut_along_it(config, tmp_path):
    volume = np.random.default_rng(22).random((133, 29, 27), dtype=np.float32)
    np.save(tmp_path / "in.npy", volume)
    net = densepred.create_prediction_net(config)
    fov = net.geometry.fov
    tile = (133 + fov[0] - 1, 29 + fov[1] - 1, 27 + fov[2] - 1)  # one mirrored tile: the whole volume
    densepred.predict_to_file(densepred.PredictJob(config, str(tmp_path / "in.npy"), str(tmp_path / "o.zarr"),
                                                   mode="stream", tile=tile, mirror=True, progress=False, levels=1))
    level = zarr.open_group(tmp_path / "o.zarr", mode="r")["0"]
    assert level.shards[1] == 19  # 133 = 7 x 19: the largest divisor from 8 to 64
    expected = densepred.predict_dense(net, volume, tile_shape=tile, mode="dilated", mirror=True)
    np.testing.assert_allclose(level[...], expected, rtol=0, atol=1e-5)


def test_a_wide_streams_slabs_are_cut_into_columns_of_shards_that_the_writers_share(config, tmp_path, monkeypatch):
    import threading

    from densepred.io.outputs import OutputArray

    volume = np.random.default_rng(24).random((21, 300, 23), dtype=np.float32)
    np.save(tmp_path / "in.npy", volume)
    net = densepred.create_prediction_net(config)
    tile = tuple(n + f - 1 for n, f in zip(volume.shape, net.geometry.fov, strict=True))  # one mirrored tile
    writes, original = [], OutputArray.write_box

    def job(output, **options):
        return densepred.PredictJob(config, str(tmp_path / "in.npy"), str(tmp_path / output), mode="stream",
                                    tile=tile, mirror=True, progress=False, levels=1, **options)

    def recorded(self, box, values, labels):
        writes.append((threading.get_ident(), box[1].start, box[0].stop))
        if box[1].start == 150 and box[0].stop == 21 and "cut" in str(self.spec):
            raise OSError(5, "Input/output error")  # the second column's last rows
        return original(self, box, values, labels)

    monkeypatch.setattr(OutputArray, "write_box", recorded)
    densepred.predict_to_file(job("whole.zarr"))
    level = zarr.open_group(tmp_path / "whole.zarr", mode="r")["0"]
    assert level.shards[1:] == (21, 150, 23)  # 300 = 2 x 150 across: the largest divisor from 64 to 256
    np.testing.assert_allclose(level[...], densepred.predict_dense(net, volume, tile_shape=tile, mode="dilated",
                                                                   mirror=True), rtol=0, atol=1e-5)
    by_column = {start: {thread for thread, s, _ in writes if s == start} for start in (0, 150)}
    assert {len(threads) for threads in by_column.values()} == {1}  # a column's shards from one writer
    assert by_column[0] != by_column[150]  # the two writers share the slab
    with pytest.raises(densepred.DensePredError, match="Input/output error"):
        densepred.predict_to_file(job("cut.zarr"))
    assert (tmp_path / "cut.zarr.densepred" / "done.log").read_text() == ""  # not done while a column is not
    monkeypatch.setattr(OutputArray, "write_box", original)
    densepred.predict_to_file(job("cut.zarr", resume=True))
    assert zarr.open_group(tmp_path / "cut.zarr", mode="r")["0"][...].tobytes() == level[...].tobytes()


def test_the_default_stream_tile_is_long_and_its_cross_section_fits_the_budget(config):
    import torch

    from densepred.geometry.memory import STREAM_LENGTH
    from densepred.io import ChannelFirst
    from densepred.networks.memory_budget import memory_budget, tile_cost
    from densepred.running.planning.tiling import footprint_for, plan_tiles

    net = densepred.create_prediction_net(config)
    source = ChannelFirst(np.broadcast_to(np.float32(0.5), (700, 300, 280)), 1, 3)
    from densepred.system import resident_bytes

    budget = memory_budget(resident_bytes() + 2**30, torch.device("cpu"))  # 1 GiB over this process
    footprint = footprint_for(net, source, 1, torch.device("cpu"))
    stream = plan_tiles(net.geometry, source.spatial_shape, None, "stream", True, budget, footprint)
    cube = plan_tiles(net.geometry, source.spatial_shape, None, "dilated", True, budget, footprint)
    assert stream.grid[0] == math.ceil(700 / STREAM_LENGTH)  # as few streams as the length allows, of equal length
    assert stream.output_tile[0] == STREAM_SLAB * math.ceil(700 / stream.grid[0] / STREAM_SLAB)
    assert stream.output_tile[1] * stream.output_tile[2] > cube.output_tile[1] * cube.output_tile[2]
    assert tile_cost(net.geometry, "stream", footprint, budget)(stream.output_tile) <= budget.room


@pytest.mark.slow  # 7 s
def test_a_stream_with_a_region_of_interest_on_a_cluster_equals_dilated_in_one_process(config, tmp_path):
    volume = np.random.default_rng(23).random((70, 33, 30), dtype=np.float32)
    np.save(tmp_path / "in.npy", volume)
    roi = ((3, 67), (2, 31), (0, 30))

    def job(output, mode, **options):
        return densepred.PredictJob(config, str(tmp_path / "in.npy"), str(tmp_path / output), mode=mode,
                                    tile=(64 + 2, 19, 17), mirror=True, roi=roi, progress=False, levels=1, **options)

    densepred.predict_to_file(job("dilated.zarr", "dilated"))
    densepred.predict_to_file(job("stream.zarr", "stream", workers=2, threads_per_worker=1))
    stream = zarr.open_group(tmp_path / "stream.zarr", mode="r")["0"]
    assert stream.shards[1] == 64  # a block's stream is cut into shards of whole slabs
    np.testing.assert_allclose(stream[...], zarr.open_group(tmp_path / "dilated.zarr", mode="r")["0"][...],
                               rtol=0, atol=1e-5)
